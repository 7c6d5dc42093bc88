"""`sentimentops drift report`: Evidently's PSI drift report of recent prediction records against the reference
sample stored with the model, beside the online PSI of sentimentops.steps.core.psi; the HTML goes to MLflow.

Evidently bins on its own (from the reference sample), so its PSI differs a little from the online one; both are
written to `drift.json` so the two can be compared. The Evidently API changed at 0.7 (docs/measurements.md):
`Report([DataDriftPreset(method="psi")]).run(current, reference)`, current first.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.core.psi import FEATURES, DriftReference, Features, window_psi
from sentimentops.steps.drift.records import read_records

log = get_logger(__name__)

NUMERIC = ["input_tokens", "confidence", "content"]


def reference_frame(reference: DriftReference) -> pd.DataFrame:
    """The reference sample (numbers and labels only) as a table; features are sampled independently."""
    columns = {name: reference.features[name].sample for name in FEATURES}
    n = min(len(v) for v in columns.values())
    if n == 0:
        raise ValueError("the drift reference holds no sample values (written by an older evaluate?)")
    return pd.DataFrame({k: v[:n] for k, v in columns.items()})


def current_frame(features: Features) -> pd.DataFrame:
    return pd.DataFrame({name: features.column(name) for name in FEATURES})


def evidently_psi(reference: pd.DataFrame, current: pd.DataFrame, threshold: float):
    """Per-column PSI from Evidently, and the snapshot (for save_html)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=["predicted_label"])
    snapshot = Report([DataDriftPreset(method="psi", threshold=threshold)]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition))
    values = {m["config"]["column"]: float(m["value"]) for m in snapshot.dict()["metrics"]
              if str(m["config"].get("type", "")).endswith("ValueDrift")}
    return values, snapshot


def report(args: argparse.Namespace, settings, reference: DriftReference) -> int:
    paths = [args.records] + sorted(args.records.parent.glob(args.records.name + ".*"))  # rotated parts too
    features, versions = read_records([p for p in paths if p.is_file()], last=args.last or None)
    if not len(features):
        log.error("drift report: no records in %s", args.records)
        return 2
    trusted = len(features) >= settings.min_window
    if not trusted:  # the same gate as `drift watch` (drift/windows.py): written, but flagged
        log.warning("drift report: %d records, fewer than --min-window %d: PSI this small a sample is noise "
                    "(sentimentops.steps.drift.windows)", len(features), settings.min_window)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    evidently, snapshot = evidently_psi(reference_frame(reference), current_frame(features), settings.threshold)
    seconds = time.perf_counter() - start
    online = window_psi(reference, features)
    html = args.out / "drift_report.html"
    snapshot.save_html(str(html))
    summary = {"records": len(features), "trusted": trusted, "model_versions": sorted(set(versions)),
               "threshold": settings.threshold,
               "psi_online": online, "psi_evidently": evidently, "evidently_seconds": round(seconds, 3),
               "drifted": sorted(f for f, v in online.items() if v > settings.threshold)}
    (args.out / "drift.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_mlflow:
        summary["mlflow_run_id"] = log_to_mlflow(settings, args.out, summary)
        (args.out / "drift.json").write_text(json.dumps(summary, indent=2) + "\n")
    emit(json.dumps({k: summary[k] for k in ("records", "trusted", "psi_online", "psi_evidently", "drifted")}))
    return 0


def log_to_mlflow(settings, out: Path, summary: dict) -> str:
    """One run per report in the `<experiment>-drift` experiment, tagged with the served model version(s)."""
    import mlflow

    from sentimentops.steps.core.tracking import mlflow_run

    drift_settings = settings.model_copy(update={"experiment": f"{settings.experiment}-drift"})
    tags = {"model_version": ",".join(summary["model_versions"]), "drifted": ",".join(summary["drifted"])}
    with mlflow_run(drift_settings, run_name="drift-report", tags=tags) as run:
        mlflow.log_metrics({f"psi_{k}": v for k, v in summary["psi_online"].items()}
                           | {f"evidently_psi_{k}": v for k, v in summary["psi_evidently"].items()}
                           | {"records": summary["records"]})
        mlflow.log_artifact(str(out / "drift_report.html"), "drift")
        mlflow.log_artifact(str(out / "drift.json"), "drift")
        return run.info.run_id
