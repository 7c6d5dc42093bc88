"""evaluate's measurements: accuracy, F1, ROC-AUC and the confusion matrix from labels and P(positive), and the drift
monitor's reference built from the served tokens and answers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sentimentops.steps.core.backends import Encoded
from sentimentops.steps.core.contract import DRIFT_REFERENCE_FILE, LABELS, THRESHOLD, class_ids_of
from sentimentops.steps.core.psi import Features, build_reference, features_from_predictions


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


def drift_features(encoded: list[Encoded], probs: np.ndarray) -> Features:
    """Per-instance drift features exactly as the predictor records them (steps/serve/records.py): token count and
    `content` from the same Encoded, P(positive) rounded like the records (tests/unit/test_contract.py)."""
    return features_from_predictions([e.length for e in encoded], probs, [e.content for e in encoded])


def write_drift_reference(model_dir: Path, texts: list[str], probs: np.ndarray, out: Path,
                          encoded: list[Encoded] | None = None) -> Path:
    """The drift monitor's reference (docs/metrics.md): the challenger's features on the held-out test split, tokenized
    the way the predictor serves (`encoded`, when the caller has it already), binned by sentimentops.steps.core.psi;
    register stores it with the model."""
    if encoded is None:
        from sentimentops.steps.evaluate.scoring import encode

        encoded = encode(model_dir, texts)
    features = drift_features(encoded, probs)
    path = out / DRIFT_REFERENCE_FILE
    build_reference(features, source=f"evaluate: held-out test split, {len(texts)} rows").write(path)
    return path
