"""evaluate: accuracy, F1, ROC-AUC and a confusion matrix on the held-out test split, for the challenger and,
on the same rows, the current champion; logged to the training run in MLflow.

Scoring the champion on the same test rows makes the promotion gate compare like with like (a stored accuracy from
another test sample would not). Both are scored the way the predictor serves: tokenized by its TextEncoder
(tokenizer.json) and truncated at contract.MAX_TOKENS, so the accuracy that is gated, tagged and printed is the one
users get (issue 11, item 7: scoring at the training length, 128 in the local demo, overstated or understated it), and
the drift reference counts tokens and `content` with the very code the predictor records them with.

Reuse is the local runner's decision (workflows/runner), not this step's.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from pydantic import Field

from sentimentops.steps.core.backends import Encoded, TextEncoder
from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.contract import DRIFT_REFERENCE_FILE, LABELS, MAX_TOKENS, THRESHOLD, class_ids_of
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.core.manifests import TrainManifest, read_manifest, write_manifest
from sentimentops.steps.core.psi import Features, build_reference, features_from_predictions
from sentimentops.steps.core.tracking import alias_version, download_model_dir, mlflow_run

log = get_logger(__name__)


class EvaluateSettings(CommonSettings):
    section: ClassVar[str] = "evaluate"
    batch_size: int = Field(64, ge=1)
    precision: str = Field("auto", pattern="^(auto|bf16|fp16|fp32)$")
    num_threads: int = Field(0, ge=0)
    compare_champion: bool = Field(True, description="Also score the current champion on the same test rows.")


@dataclass
class Metrics:
    accuracy: float
    f1: float
    roc_auc: float
    rows: int
    confusion: list[list[int]]  # [[tn, fp], [fn, tp]]


def compute_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = THRESHOLD) -> Metrics:
    """The pure core: metrics from labels and P(positive), decided by the contract's rule (or another threshold)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

    preds = class_ids_of(probs) if threshold == THRESHOLD else (np.asarray(probs) >= threshold).astype(int)
    # ROC-AUC is undefined with one class present; report 0.5 (chance) rather than failing the step.
    auc = float(roc_auc_score(labels, probs)) if len(set(labels.tolist())) == 2 else 0.5
    return Metrics(accuracy=float(accuracy_score(labels, preds)), f1=float(f1_score(labels, preds, zero_division=0)),
                   roc_auc=auc, rows=len(labels),
                   confusion=confusion_matrix(labels, preds, labels=[0, 1]).tolist())


def plot_confusion(metrics: Metrics, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(metrics.confusion)
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black", fontsize=13)
    ax.set_xticks([0, 1], list(LABELS))
    ax.set_yticks([0, 1], list(LABELS))
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{title}\naccuracy {metrics.accuracy:.3f}  F1 {metrics.f1:.3f}  n={metrics.rows}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def encode(model_dir: Path, texts: list[str]) -> list[Encoded]:
    """The texts as the predictor tokenizes them: its TextEncoder, truncated at contract.MAX_TOKENS."""
    return TextEncoder(model_dir, MAX_TOKENS).encode(texts)


def score(model_dir: Path, encoded: list[Encoded], settings: EvaluateSettings) -> np.ndarray:
    """P(positive) per instance, on the serving tokens (transformers + torch: the GPU path of the predictor)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from sentimentops.steps.core.scoring import predict_proba

    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    pad_id = TextEncoder(model_dir, MAX_TOKENS).pad_id
    return predict_proba(model, [e.ids for e in encoded], pad_id=pad_id, batch_size=settings.batch_size,
                         precision=settings.precision, max_length=MAX_TOKENS)


def drift_features(encoded: list[Encoded], probs: np.ndarray) -> Features:
    """Per-instance drift features exactly as the predictor records them (steps/serve/records.py): token count and
    `content` from the same Encoded, P(positive) rounded like the records (tests/unit/test_contract.py)."""
    return features_from_predictions([e.length for e in encoded], probs, [e.content for e in encoded])


def write_drift_reference(model_dir: Path, texts: list[str], probs: np.ndarray, out: Path,
                          encoded: list[Encoded] | None = None) -> Path:
    """The drift monitor's reference (docs/metrics.md): the challenger's features on the held-out test split, tokenized
    the way the predictor serves (`encoded`, when the caller has it already), binned by sentimentops.steps.core.psi;
    register stores it with the model."""
    features = drift_features(encoded if encoded is not None else encode(model_dir, texts), probs)
    path = out / DRIFT_REFERENCE_FILE
    build_reference(features, source=f"evaluate: held-out test split, {len(texts)} rows").write(path)
    return path


def champion_metrics(settings: EvaluateSettings, test: pd.DataFrame) -> tuple[Metrics | None, str | None]:
    version = alias_version(settings, "champion") if settings.compare_champion else None
    if version is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model_dir(settings, f"models:/{settings.registered_model}/{version.version}", Path(tmp))
        probs = score(folder, encode(folder, test["text"].tolist()), settings)
    return compute_metrics(test["label"].to_numpy(), probs), str(version.version)


@stage_main("evaluate")
def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", type=Path, required=True)
        parser.add_argument("--model", type=Path, required=True, help="the train step's output folder")
        parser.add_argument("--out", type=Path, required=True)

    settings, args = parse_settings(EvaluateSettings, argv, prog="sentimentops evaluate", description=__doc__,
                                    add_arguments=add_arguments)
    inputs = {"dataset": args.dataset, "model": args.model}
    run_id = read_manifest(args.model, TrainManifest).refs.mlflow_run_id  # DataError (exit 1) if not a train output
    if not (args.dataset / "test.parquet").is_file():
        raise DataError(f"{args.dataset}: no test.parquet (expected the dataset folder with its held-out split)")
    test = pd.read_parquet(args.dataset / "test.parquet")
    args.out.mkdir(parents=True, exist_ok=True)
    texts = test["text"].tolist()
    log.info("evaluate: scoring %d held-out reviews at %d tokens, as the predictor serves them", len(texts), MAX_TOKENS)
    encoded = encode(args.model / "model", texts)
    challenger_probs = score(args.model / "model", encoded, settings)
    challenger = compute_metrics(test["label"].to_numpy(), challenger_probs)
    drift_reference = write_drift_reference(args.model / "model", texts, challenger_probs, args.out, encoded)
    champion, champion_version = champion_metrics(settings, test)
    report = {"challenger": asdict(challenger), "champion": asdict(champion) if champion else None,
              "champion_version": champion_version}
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(challenger, args.out / "confusion_matrix.png", "challenger on the held-out test split")
    summary = {f"test_{k}": getattr(challenger, k) for k in ("accuracy", "f1", "roc_auc")}
    if champion:
        summary.update({f"champion_test_{k}": getattr(champion, k) for k in ("accuracy", "f1", "roc_auc")})
    with mlflow_run(settings, run_id=run_id):
        import mlflow

        mlflow.log_metrics(summary)
        mlflow.log_artifact(str(args.out / "confusion_matrix.png"), "evaluation")
        mlflow.log_artifact(str(args.out / "metrics.json"), "evaluation")
        mlflow.log_artifact(str(drift_reference), "evaluation")
    emit(f"evaluate (at {MAX_TOKENS} tokens, as served): " + "  ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    write_manifest(args.out, "evaluate", inputs=inputs, outputs={"metrics": "metrics.json",
                   "confusion_matrix": "confusion_matrix.png", "drift_reference": DRIFT_REFERENCE_FILE},
                   params={"max_tokens": MAX_TOKENS}, metrics=summary,
                   refs={"mlflow_run_id": run_id, "champion_version": champion_version})
    return 0
