"""evaluate: the evidence that a model is worth serving, on the held-out test split, logged to the training run.

For the challenger, scored the way it is served (steps/evaluate/scoring.py: the predictor's tokens at
contract.MAX_TOKENS, the ONNX export it will serve on a CPU, with the paired int8 decision): accuracy, F1, ROC-AUC and
a confusion matrix; beside it, on the same rows, the current champion (through its own served backend) and a TF-IDF +
logistic-regression baseline fitted on the same training split; the versioned behavioural suite (minimum
functionality, invariance, directional tests); accuracy per review-length slice and for truncated reviews; calibration
(ECE, reliability diagram); the worst errors with their most influential words. All of it lands in metrics.json, an
HTML report and PNGs, logged to MLflow under `evaluation/`, and the flat numbers in the manifest for the policy.

Where ingest held out a production slice (production.parquet: the most recent labelled feedback, steps/ingest.py),
the challenger and the champion are scored on it too, through the same backends: `production_accuracy`,
`production_f1`, `champion_production_*` and `production_rows`. The base test split says whether the model still
knows the corpus; the slice says whether it knows today's traffic, and the policy refuses a regression on either.

Reuse is the local runner's decision (workflows/runner), not this step's.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import Field

from sentimentops.steps.core.backends import Encoded
from sentimentops.steps.core.config import CommonSettings, load_settings, parse_settings
from sentimentops.steps.core.contract import DRIFT_REFERENCE_FILE, LABELS, MAX_TOKENS, ONNX_DIR, class_ids_of
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.core.manifests import TrainManifest, read_manifest, write_manifest
from sentimentops.steps.core.production import PRODUCTION_SPLIT
from sentimentops.steps.core.tracking import alias_version, download_model, mlflow_run
from sentimentops.steps.evaluate.behaviour import suite_version
from sentimentops.steps.evaluate.metrics import (
    Metrics,
    compute_metrics,
    plot_confusion,
    write_drift_reference,
)
from sentimentops.steps.evaluate.onnx_export import ExportSettings
from sentimentops.steps.evaluate.report import render_report
from sentimentops.steps.evaluate.scoring import (
    Scored,
    Served,
    encode,
    score_challenger,
    score_folder,
    served,
    stratified_head,
    use_torch,
)

log = get_logger(__name__)


class EvaluateSettings(CommonSettings):
    section: ClassVar[str] = "evaluate"
    backend: str = Field("auto", pattern="^(auto|onnx|torch)$",
                         description="What scores the models: auto = what the predictor serves there (the ONNX "
                         "export on a CPU, torch on a GPU).")
    batch_size: int = Field(64, ge=1, description="Batch size of the torch path.")
    precision: str = Field("auto", pattern="^(auto|bf16|fp16|fp32)$", description="Precision of the torch path.")
    num_threads: int = Field(0, ge=0, description="CPU threads (0 = every core).")
    compare_champion: bool = Field(True, description="Also score the current champion on the same test rows.")
    baseline: bool = Field(True, description="Fit the TF-IDF + logistic-regression baseline on the training split "
                           "and score it on the same test rows.")
    behaviour: bool = Field(True, description="Run the versioned behavioural suite (steps/evaluate/"
                            "behaviour_suite.yaml) through the served backend.")
    explain_errors: int = Field(5, ge=0, description="Explain this many of the most confident errors in the report "
                                "(word occlusion through the served backend).")
    max_rows_cpu: int = Field(0, ge=0, description="Without a GPU, score at most this many test rows (a stratified "
                              "share, said in the log and the report); 0 = all. The local profile bounds it: the full "
                              "25,000-review split takes over 12 minutes on 2 cores, where a GPU scores it in seconds.")


def torch_kwargs(settings: EvaluateSettings) -> dict[str, Any]:
    return {"batch_size": settings.batch_size, "precision": settings.precision, "num_threads": settings.num_threads}


def champion_metrics(settings: EvaluateSettings, frames: dict[str, pd.DataFrame]
                     ) -> tuple[dict[str, Metrics], str | None, str]:
    """The champion on the same rows (each of `frames`: the test rows, the production slice) through the backend
    it is served with, downloaded once: ({frame name: metrics}, version, backend); ({}, None, "") without one."""
    version = alias_version(settings, "champion") if settings.compare_champion else None
    if version is None:
        return {}, None, ""
    found, backend = {}, ""
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model(settings, f"models:/{settings.registered_model}/{version.version}", Path(tmp))
        for name, frame in frames.items():
            probs, backend = score_folder(folder, encode(folder.model_dir, frame["text"].tolist()),
                                          backend=settings.backend, threads=settings.num_threads,
                                          torch_kwargs=torch_kwargs(settings))
            found[name] = compute_metrics(frame["label"].to_numpy(), probs)
    return found, str(version.version), backend


PRODUCTION_METRICS = ("accuracy", "f1")


def production_summary(challenger: Metrics, champion: Metrics | None) -> dict[str, float]:
    """The flat production-slice numbers (manifest, MLflow, the policy): production_<m>, champion_production_<m>
    and production_rows, the `test_*` / `champion_test_*` scheme on the slice."""
    found: dict[str, float] = {f"production_{k}": getattr(challenger, k) for k in PRODUCTION_METRICS}
    found["production_rows"] = float(challenger.rows)
    if champion is not None:
        found.update({f"champion_production_{k}": getattr(champion, k) for k in PRODUCTION_METRICS})
    return found


def read_production(dataset: Path) -> pd.DataFrame | None:
    """The production slice ingest held out, or None: it is optional (no feedback, or too little for a slice)."""
    path = dataset / f"{PRODUCTION_SPLIT}.parquet"
    if not path.is_file():
        return None
    frame = read_split(dataset, PRODUCTION_SPLIT)
    return frame if len(frame) else None


REPORT_FILE = "report.html"
IMAGES = {"confusion": "confusion_matrix.png", "reliability": "reliability.png"}
HEADLINE = ("test_accuracy", "test_f1", "tfidf_test_accuracy", "champion_test_accuracy", "behaviour_pass_rate",
            "test_ece", "production_accuracy", "champion_production_accuracy")


def headline(summary: dict[str, float], backend: str, rows: int) -> str:
    """The step's one-line result: the numbers a person compares first (all of them are in MLflow)."""
    shown = "  ".join(f"{k} {summary[k]:.4f}" for k in HEADLINE if k in summary)
    return f"evaluate ({rows} test reviews at {MAX_TOKENS} tokens, {backend}, as served): {shown}"


def evidence(settings: EvaluateSettings, dataset: Path, test: pd.DataFrame, encoded: list[Encoded],
             probs: np.ndarray, model: Served, out: Path, summary: dict[str, float]) -> dict[str, Any]:
    """The evidence beside the headline metrics: the TF-IDF baseline, the behavioural suite, slices, calibration and
    the worst errors explained. Adds the flat numbers to `summary`; returns the metrics.json sections."""
    from sentimentops.steps.evaluate import behaviour, slices
    from sentimentops.steps.evaluate.baseline import fit_tfidf_baseline

    labels = test["label"].to_numpy()
    found: dict[str, Any] = {"baseline": None, "behaviour": None, "explanations": None}
    if settings.baseline:
        train = read_split(dataset, "train")
        result = fit_tfidf_baseline(train["text"].tolist(), train["label"].to_numpy(), test["text"].tolist(),
                                    labels, metrics=compute_metrics, seed=42)
        found["baseline"] = result.to_json()
        summary.update(result.flat_metrics())
    if settings.behaviour:
        suite = behaviour.run_suite(model.predict)
        found["behaviour"] = behaviour.to_json(suite)
        summary.update(behaviour.flat_metrics(suite))
    cuts = slices.length_slices(labels, probs, [e.length for e in encoded], [e.truncated for e in encoded])
    cal = slices.calibration(labels, probs)
    slices.plot_reliability(cal, out / IMAGES["reliability"], "challenger on the held-out test split")
    found.update({"slices": slices.slices_to_json(cuts), "calibration": slices.calibration_to_json(cal)})
    summary.update(slices.flat_metrics(cuts, cal))
    if settings.explain_errors:
        found["explanations"] = explain_worst(test, probs, model, settings.explain_errors)
    return found


def explain_worst(test: pd.DataFrame, probs: np.ndarray, model: Served, k: int) -> list[dict[str, Any]]:
    """The k most confident errors, each with the words that moved P(positive) most (core.explain, through the
    served backend): what a person reads first to see why the model fails."""
    labels = test["label"].to_numpy()
    wrong = np.flatnonzero(class_ids_of(probs) != labels)
    worst = wrong[np.argsort(-np.abs(probs[wrong] - 0.5), kind="stable")][:k]
    explainer = model.explainer(max_words=64, top_k=8)
    found = []
    for i in worst:
        text = str(test["text"].iloc[i])
        result = explainer(text)
        found.append({"text": text, "label": LABELS[int(labels[i])], "predicted": result.label,
                      "p_positive": float(probs[i]), "attributed_words": result.attributed_words,
                      "total_words": result.total_words,
                      "tokens": [{"token": w.word, "weight": w.weight} for w in result.top]})
    return found


def read_split(dataset: Path, split: str) -> pd.DataFrame:
    path = dataset / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"{dataset}: no {split}.parquet (expected the ingest step's dataset folder)")
    return pd.read_parquet(path)


def bounded(test: pd.DataFrame, settings: EvaluateSettings) -> pd.DataFrame:
    """The test rows scored: all of them on a GPU or when unbounded; else at most max_rows_cpu, the same number per
    label in split order (ingest already shuffled it), so the bound is deterministic."""
    if not settings.max_rows_cpu or len(test) <= settings.max_rows_cpu or use_torch(settings.backend):
        return test
    rows = stratified_head(test["label"].to_numpy(), settings.max_rows_cpu)
    log.warning("evaluate: scoring %d of the %d test rows (evaluate.max_rows_cpu, profile %s; no GPU here): set "
                "evaluate.max_rows_cpu to 0 or use a GPU for the full split", len(rows), len(test), settings.profile)
    return test.iloc[rows].reset_index(drop=True)


@stage_main("evaluate")
def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", type=Path, required=True)
        parser.add_argument("--model", type=Path, required=True, help="the train step's output folder")
        parser.add_argument("--out", type=Path, required=True)

    settings, args = parse_settings(EvaluateSettings, argv, prog="sentimentops evaluate", description=__doc__,
                                    add_arguments=add_arguments)
    export = load_settings(ExportSettings, {"profile": settings.profile})
    inputs = {"dataset": args.dataset, "model": args.model}
    run_id = read_manifest(args.model, TrainManifest).refs.mlflow_run_id  # DataError (exit 1) if not a train output
    split = read_split(args.dataset, "test")
    split_rows = len(split)
    test = bounded(split, settings)
    model_dir = args.model / "model"
    args.out.mkdir(parents=True, exist_ok=True)
    texts, labels = test["text"].tolist(), test["label"].to_numpy()
    log.info("evaluate: scoring %d held-out reviews at %d tokens, as the predictor serves them", len(texts),
             MAX_TOKENS)
    encoded = encode(model_dir, texts)
    scored: Scored = score_challenger(model_dir, encoded, labels, backend=settings.backend, export=export,
                                      onnx_out=args.out / ONNX_DIR, torch_kwargs=torch_kwargs(settings))
    challenger = compute_metrics(labels, scored.probs)
    write_drift_reference(model_dir, texts, scored.probs, args.out, encoded)
    production = read_production(args.dataset)
    scored_frames = {"test": test, **({PRODUCTION_SPLIT: production} if production is not None else {})}
    champions, champion_version, champion_backend = champion_metrics(settings, scored_frames)
    champion = champions.get("test")
    model = served(model_dir, args.out / ONNX_DIR, scored.backend, threads=settings.num_threads)
    report: dict[str, Any] = {
        "challenger": asdict(challenger), "served_backend": scored.backend, "max_tokens": MAX_TOKENS,
        "test_rows": {"scored": len(test), "split": split_rows},
        "champion": asdict(champion) if champion else None, "champion_version": champion_version,
        "champion_backend": champion_backend or None, "int8": scored.int8_evidence(),
    }
    summary: dict[str, float] = {f"test_{k}": getattr(challenger, k) for k in ("accuracy", "f1", "roc_auc")}
    if champion:
        summary.update({f"champion_test_{k}": getattr(champion, k) for k in ("accuracy", "f1", "roc_auc")})
    if production is not None:
        log.info("evaluate: scoring the %d-row production slice (recent feedback)", len(production))
        on_slice = compute_metrics(production["label"].to_numpy(), model.predict(production["text"].tolist()))
        champion_slice = champions.get(PRODUCTION_SPLIT)
        summary.update(production_summary(on_slice, champion_slice))
        report[PRODUCTION_SPLIT] = {"challenger": asdict(on_slice), "rows": len(production),
                                    "champion": asdict(champion_slice) if champion_slice else None}
    else:
        report[PRODUCTION_SPLIT] = None
    report.update(evidence(settings, args.dataset, test, encoded, scored.probs, model, args.out, summary))
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(challenger, args.out / "confusion_matrix.png", "challenger on the held-out test split")
    (args.out / REPORT_FILE).write_text(render_report(report, title=f"Evaluation: {settings.workflow_name}",
                                                      images=IMAGES))
    with mlflow_run(settings, run_id=run_id):
        import mlflow

        mlflow.log_metrics(summary)
        mlflow.set_tag("evaluate.backend", scored.backend)
        for name in (*IMAGES.values(), "metrics.json", DRIFT_REFERENCE_FILE, REPORT_FILE):
            mlflow.log_artifact(str(args.out / name), "evaluation")
    emit(headline(summary, scored.backend, len(test)))
    write_manifest(args.out, "evaluate", inputs=inputs, outputs={
        "metrics": "metrics.json", "report": REPORT_FILE, **IMAGES, "drift_reference": DRIFT_REFERENCE_FILE,
        "onnx": ONNX_DIR}, params={"max_tokens": MAX_TOKENS, "backend": scored.backend,
                                   "behaviour_suite": suite_version() if settings.behaviour else None},
        metrics=summary, refs={"mlflow_run_id": run_id, "champion_version": champion_version})
    return 0

