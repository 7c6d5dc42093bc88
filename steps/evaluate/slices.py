"""Where the challenger is right and how far its probabilities can be trusted: accuracy per slice of served token
length (and for reviews cut at the serving limit), and calibration (issue 14).

One accuracy over the test split hides where a model fails: long reviews are truncated at contract.MAX_TOKENS, so
their ending (often the verdict) is never seen, and a model can be fine on short reviews and poor on long ones.
The slices use the tokens as served (backends.Encoded: `length` after truncation, `truncated`), so they describe
what users get. Calibration matters because P(positive) is served and recorded as a probability (the drift monitor
bins it): a model that says 0.99 and is right 80% of the time misleads every consumer of that number.

Calibration basis, one for everything here: the confidence of the predicted class, max(p, 1 - p) with the class
decided by contract.class_ids_of (so a tie at 0.5 is positive, confidence 0.5), against whether that prediction is
right: the top-label calibration of Guo et al. (2017). For two classes the confidence lies in [0.5, 1], so the
`bins` equal-width bins span [0.5, 1] (width 0.05 for 10 bins), not [0, 1] (where half of them would always be
empty). Each bin is [lower, upper), the last one closed. ECE = sum over bins of (rows in bin / rows) *
|accuracy - mean confidence|; MCE = the largest such gap over non-empty bins. The Brier score is over P(positive),
mean((p - label)^2), the usual binary definition.

Pure functions over numpy arrays; `plot_reliability` is the only one that writes (a PNG). NaN marks an undefined
number (an empty slice's accuracy); the `*_json` helpers write it as null and `flat_metrics` leaves it out.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from sentimentops.steps.core.contract import class_ids_of

LENGTH_EDGES = (0, 128, 256, 512)  # tokens as served; 512 = contract.MAX_TOKENS, the last edge is inclusive
TRUNCATED, NOT_TRUNCATED = "truncated", "not_truncated"


@dataclass(frozen=True)
class SliceMetrics:
    """One slice of the test rows. `lower`/`upper`: its token-length bucket, None for the truncation slices."""

    name: str
    rows: int
    accuracy: float  # NaN when rows == 0
    positive_rate: float  # share of actual positives (labels), NaN when empty
    predicted_positive_rate: float  # share decided positive by contract.class_ids_of, NaN when empty
    lower: int | None = None
    upper: int | None = None


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    count: int
    mean_confidence: float  # NaN when count == 0
    accuracy: float  # NaN when count == 0


@dataclass(frozen=True)
class Calibration:
    """Top-label calibration (see the module docstring for the basis) and the Brier score over P(positive)."""

    ece: float
    mce: float
    brier: float
    rows: int
    bins: list[CalibrationBin]
    basis: str = "confidence of the predicted class, max(p, 1 - p); equal-width bins over [0.5, 1]"


def _arrays(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int 0/1 and P(positive) as float, checked: a bad input is a caller's bug, not a slice to report."""
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y, p


def _slice(name: str, y: np.ndarray, p: np.ndarray, mask: np.ndarray, lower: int | None = None,
           upper: int | None = None) -> SliceMetrics:
    rows = int(mask.sum())
    if rows == 0:
        return SliceMetrics(name, 0, math.nan, math.nan, math.nan, lower, upper)
    preds = class_ids_of(p[mask])
    return SliceMetrics(name, rows, float((preds == y[mask]).mean()), float(y[mask].mean()), float(preds.mean()),
                        lower, upper)


def bucket_name(lower: int, upper: int) -> str:
    return f"len_{lower}_{upper}"


def length_slices(labels: Any, probs: Any, lengths: Any, truncated: Any,
                  edges: Sequence[int] = LENGTH_EDGES) -> list[SliceMetrics]:
    """Accuracy per token-length bucket ([lower, upper), the last bucket closed so a review of exactly the serving
    limit counts), then the `truncated` and `not_truncated` slices. Every bucket is reported, an empty one with rows
    0 and NaN rates, so the slices line up across runs. A length outside [edges[0], edges[-1]] is a ValueError: with
    the default edges it would mean tokens past the serving limit, which the predictor never sees."""
    y, p = _arrays(labels, probs)
    n = np.asarray(lengths, dtype=np.int64).ravel()
    cut = np.asarray(truncated, dtype=bool).ravel()
    if not (len(n) == len(cut) == len(y)):
        raise ValueError(f"{len(y)} labels, {len(n)} lengths and {len(cut)} truncation flags")
    bounds = [int(e) for e in edges]
    if len(bounds) < 2 or any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(f"edges must be at least two strictly increasing numbers, got {list(edges)}")
    if len(n) and (n.min() < bounds[0] or n.max() > bounds[-1]):
        raise ValueError(f"token lengths {n.min()}..{n.max()} outside the edges {bounds[0]}..{bounds[-1]}")
    out = []
    for i, (lower, upper) in enumerate(pairwise(bounds)):
        last = i == len(bounds) - 2
        mask = (n >= lower) & ((n <= upper) if last else (n < upper))
        out.append(_slice(bucket_name(lower, upper), y, p, mask, lower, upper))
    out.append(_slice(TRUNCATED, y, p, cut))
    out.append(_slice(NOT_TRUNCATED, y, p, ~cut))
    return out


def calibration(labels: Any, probs: Any, bins: int = 10) -> Calibration:
    """ECE, MCE, Brier and the reliability table (the module docstring gives the basis). No rows: every number
    NaN and every bin empty."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    y, p = _arrays(labels, probs)
    edges = np.linspace(0.5, 1.0, bins + 1)
    preds = class_ids_of(p)
    confidence = np.where(preds == 1, p, 1.0 - p)
    correct = (preds == y).astype(np.float64)
    # [lower, upper) by the very edges reported; the last bin also takes confidence 1.0.
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table, ece, gaps = [], 0.0, []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        if count == 0:
            table.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), 0, math.nan, math.nan))
            continue
        conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
        table.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), count, conf, acc))
        gaps.append(abs(acc - conf))
        ece += count / len(y) * abs(acc - conf)
    if len(y) == 0:
        return Calibration(math.nan, math.nan, math.nan, 0, table)
    return Calibration(ece=float(ece), mce=float(max(gaps)), brier=float(np.mean((p - y) ** 2)), rows=len(y),
                       bins=table)


def _clean(value: Any) -> Any:
    """NaN and infinities to None (JSON has no NaN; json.dumps would write an invalid `NaN`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def slices_to_json(slices: Sequence[SliceMetrics]) -> list[dict[str, Any]]:
    """For metrics.json, key `slices`: one dict per slice, NaN as null."""
    return [_clean(asdict(s)) for s in slices]


def calibration_to_json(cal: Calibration) -> dict[str, Any]:
    """For metrics.json, key `calibration`: ece, mce, brier, rows, basis and the bins, NaN as null."""
    return _clean(asdict(cal))


def flat_metrics(slices: Sequence[SliceMetrics], cal: Calibration) -> dict[str, float]:
    """For MLflow (and the evaluate manifest's metrics): `test_ece`, `test_mce`, `test_brier`,
    `slice_accuracy_<name>` and `slice_rows_<name>` per slice (names: len_0_128, ..., truncated, not_truncated).
    NaN is left out (MLflow would store it, and a chart of it means nothing)."""
    values: dict[str, float] = {"test_ece": cal.ece, "test_mce": cal.mce, "test_brier": cal.brier}
    for s in slices:
        values[f"slice_accuracy_{s.name}"] = s.accuracy
        values[f"slice_rows_{s.name}"] = float(s.rows)
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}


def plot_reliability(cal: Calibration, path: Path, title: str) -> None:
    """The reliability diagram: accuracy per confidence bin against the diagonal (perfect calibration), the gap
    shaded, and the rows per bin underneath (a bin of 3 rows proves little, however far off the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lower = np.array([b.lower for b in cal.bins])
    width = np.array([b.upper - b.lower for b in cal.bins])
    acc = np.array([b.accuracy for b in cal.bins])
    conf = np.array([b.mean_confidence for b in cal.bins])
    counts = np.array([b.count for b in cal.bins])
    filled = counts > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.6, 5.2), dpi=120, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.bar(lower[filled], acc[filled], width=width[filled], align="edge", color="#4c72b0", edgecolor="white",
            label="accuracy")
    # The gap from accuracy to mean confidence, hatched and unfilled so it reads on either side of the bar's top
    # (over-confident: above it; under-confident: inside it).
    top.bar(lower[filled], np.abs(conf[filled] - acc[filled]), bottom=np.minimum(acc[filled], conf[filled]),
            width=width[filled], align="edge", facecolor="none", edgecolor="#c44e52", hatch="///", linewidth=0.8,
            label="gap to mean confidence")
    lo = float(lower[0]) if len(lower) else 0.5
    top.plot([lo, 1.0], [lo, 1.0], "k--", linewidth=1, label="perfectly calibrated")
    top.set_xlim(lo, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=7)
    ece = "n/a" if not math.isfinite(cal.ece) else f"{cal.ece:.3f}"
    brier = "n/a" if not math.isfinite(cal.brier) else f"{cal.brier:.3f}"
    top.set_title(f"{title}\nECE {ece}  Brier {brier}  n={cal.rows}", fontsize=9)
    bottom.bar(lower, counts, width=width, align="edge", color="#8c8c8c", edgecolor="white")
    bottom.set_xlabel("confidence of the predicted class")
    bottom.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
