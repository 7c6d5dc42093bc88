"""evaluate: accuracy, F1, ROC-AUC and a confusion matrix on the held-out test split, for the challenger and,
on the same rows, the current champion; logged to the training run in MLflow.

Scoring the champion on the same test rows makes the promotion gate compare like with like (a stored accuracy from
another test sample would not).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, flags, load_settings
from sentimentops.steps.core.manifests import read_manifest, reusable, write_manifest
from sentimentops.steps.core.tracking import alias_version, download_model_dir, mlflow_run

SERVING_MAX_TOKENS = 512  # the predictor truncates at 512 (steps/serve): the reference must count tokens the same way


class EvaluateSettings(CommonSettings):
    section: ClassVar[str] = "evaluate"
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(0, ge=0, le=512, description="Tokens per review; 0 = the length the model was trained with.")
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


def compute_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> Metrics:
    """The pure core: metrics from labels and P(positive)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

    preds = (probs >= threshold).astype(int)
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
    ax.set_xticks([0, 1], ["negative", "positive"])
    ax.set_yticks([0, 1], ["negative", "positive"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{title}\naccuracy {metrics.accuracy:.3f}  F1 {metrics.f1:.3f}  n={metrics.rows}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def score(model_dir: Path, texts: list[str], settings: EvaluateSettings) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentimentops.steps.train.loop import predict_proba

    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    ids = tokenizer(texts, truncation=True, max_length=settings.max_length)["input_ids"]
    return predict_proba(model, ids, pad_id=tokenizer.pad_token_id, batch_size=settings.batch_size,
                         precision=settings.precision)


def write_drift_reference(model_dir: Path, texts: list[str], probs: np.ndarray, out: Path) -> Path:
    """The drift monitor's reference (docs/metrics.md): the challenger's features on the held-out test split, tokenized
    the way the predictor serves (truncated at 512 tokens), binned by sentimentops.steps.core.psi; register stores it with the model."""
    from transformers import AutoTokenizer

    from sentimentops.steps.core.psi import build_reference, continuation_share, features_from_predictions

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(texts, truncation=True, max_length=SERVING_MAX_TOKENS)["input_ids"]
    special = set(tokenizer.all_special_tokens)
    content = [continuation_share(tokenizer.convert_ids_to_tokens(row), special) for row in ids]
    features = features_from_predictions([len(row) for row in ids], probs, content)
    path = out / "drift_reference.json"
    build_reference(features, source=f"evaluate: held-out test split, {len(texts)} rows").write(path)
    return path


def champion_metrics(settings: EvaluateSettings, test: pd.DataFrame) -> tuple[Metrics | None, str | None]:
    version = alias_version(settings, "champion") if settings.compare_champion else None
    if version is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model_dir(settings, f"models:/{settings.registered_model}/{version.version}", Path(tmp))
        probs = score(folder, test["text"].tolist(), settings)
    return compute_metrics(test["label"].to_numpy(), probs), str(version.version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentimentops evaluate", description=__doc__)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="the train step's output folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = load_settings(EvaluateSettings, flags(args))
    inputs = {"dataset": args.dataset, "model": args.model}
    if (reusable(args.out, "evaluate", inputs, {}) and (args.out / "metrics.json").is_file()
            and (args.out / "drift_reference.json").is_file()):
        print(f"evaluate: reusing {args.out} (same dataset and model)")
        return 0
    try:
        run_id = read_manifest(args.model).refs["mlflow_run_id"]
        test = pd.read_parquet(args.dataset / "test.parquet")
    except (FileNotFoundError, KeyError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    if not settings.max_length:
        settings.max_length = int(read_manifest(args.model).params.get("max_length", 512))
    args.out.mkdir(parents=True, exist_ok=True)
    challenger_probs = score(args.model / "model", test["text"].tolist(), settings)
    challenger = compute_metrics(test["label"].to_numpy(), challenger_probs)
    drift_reference = write_drift_reference(args.model / "model", test["text"].tolist(), challenger_probs, args.out)
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
    print("evaluate: " + "  ".join(f"{k} {v:.4f}" for k, v in summary.items()), flush=True)
    write_manifest(args.out, "evaluate", inputs=inputs, outputs={"metrics": "metrics.json",
                   "confusion_matrix": "confusion_matrix.png", "drift_reference": "drift_reference.json"}, metrics=summary,
                   refs={"mlflow_run_id": run_id, "champion_version": champion_version})
    return 0
