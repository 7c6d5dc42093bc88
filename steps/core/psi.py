"""Population Stability Index over binned distributions: the cheap, pure-numpy core of the drift monitor.

A *reference* (computed by `evaluate` on the held-out test split, stored with the model as `drift_reference.json`,
docs/metrics.md) holds, per feature, the bin edges and the reference share per bin. A *window* of prediction
records is binned on the same edges and compared with

    PSI = sum_i (c_i - r_i) * ln(c_i / r_i)      (c, r: current and reference share of bin i)

Shares are floored at EPS before the log: an empty bin would otherwise make PSI infinite (Evidently floors at
1e-4 too). Sampling noise alone gives PSI of about (bins - 1) * (1/n_window + 1/n_reference) (the chi-square
approximation): 0.02 for 10 bins and a 500-record window, an order of magnitude under the 0.2 alert threshold.

Features (docs/metrics.md): `input_tokens` (tokens per instance after truncation, special tokens included, as the
tokenizer returns them), `confidence` (max(p, 1-p)), `predicted_label` (contract.labels_of) and `content`
(contract.content_share: the share of WordPiece continuation tokens `##...` among the instance's non-special
tokens, a vocabulary/domain signal computed from tokens alone, so no raw text is ever kept).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sentimentops.steps.core.contract import LABELS, labels_of

EPS = 1e-4
NUMERIC_BINS = 10  # deciles of the reference: equal-mass bins keep every bin's share well away from EPS
FEATURES = ("input_tokens", "confidence", "predicted_label", "content")
RECORD_DECIMALS = 6  # prediction records carry probability, confidence and content rounded to this
SAMPLE_SIZE = 5000  # reference values kept for the Evidently report (numbers only, no text)
REFERENCE_FORMAT = 1


def psi(reference: np.ndarray, current: np.ndarray, eps: float = EPS) -> float:
    """PSI of two share vectors over the same bins (each is normalised here; floors at eps)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"bins differ: reference {ref.shape} vs current {cur.shape}")
    ref = np.clip(ref / max(ref.sum(), 1e-300), eps, None)
    cur = np.clip(cur / max(cur.sum(), 1e-300), eps, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def quantile_edges(values: np.ndarray, bins: int = NUMERIC_BINS) -> np.ndarray:
    """Interior cut points at the reference quantiles; bin i is [edge_{i-1}, edge_i). Ties (token counts piled up
    at the contract.MAX_TOKENS limit, confidences at 1.0) collapse duplicate edges, and an edge that would leave a reference bin
    empty is dropped, so every reference bin holds data."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no reference values")
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = bin_counts(values, edges)
    while edges.size and (counts == 0).any():
        empty = int(np.flatnonzero(counts == 0)[0])
        edges = np.delete(edges, min(empty, edges.size - 1))
        counts = bin_counts(values, edges)
    return edges


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin for numeric values: len(edges) + 1 bins, bin i = [edge_{i-1}, edge_i)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def category_counts(values: Sequence[str] | np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """Counts per category, plus a last bin for anything unknown (a new label is drift too)."""
    values = np.asarray(values)
    counts = [int(np.count_nonzero(values == c)) for c in categories]
    return np.array(counts + [int(values.size - sum(counts))], dtype=np.int64)


@dataclass
class FeatureReference:
    """One feature's reference distribution: numeric (edges) or categorical (categories)."""

    kind: str  # numeric | categorical
    shares: list[float]
    edges: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    sample: list = field(default_factory=list)

    def counts(self, values) -> np.ndarray:
        if self.kind == "numeric":
            return bin_counts(np.asarray(values, dtype=np.float64), np.asarray(self.edges))
        return category_counts(values, self.categories)

    def psi(self, counts: np.ndarray) -> float:
        return psi(np.asarray(self.shares), counts)


@dataclass
class DriftReference:
    rows: int
    features: dict[str, FeatureReference]
    source: str = ""

    def to_json(self) -> dict:
        return {"format": REFERENCE_FORMAT, "rows": self.rows, "source": self.source,
                "features": {name: {k: v for k, v in vars(f).items() if v or k in ("kind", "shares")}
                             for name, f in self.features.items()}}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: Mapping) -> DriftReference:
        features = {name: FeatureReference(kind=f["kind"], shares=list(f["shares"]), edges=list(f.get("edges", [])),
                                           categories=list(f.get("categories", [])), sample=list(f.get("sample", [])))
                    for name, f in data["features"].items()}
        return cls(rows=int(data["rows"]), features=features, source=str(data.get("source", "")))

    @classmethod
    def read(cls, path: Path) -> DriftReference:
        return cls.from_json(json.loads(Path(path).read_text()))


def numeric_reference(values: np.ndarray, bins: int = NUMERIC_BINS, sample: int = SAMPLE_SIZE,
                      seed: int = 0) -> FeatureReference:
    values = np.asarray(values, dtype=np.float64)
    edges = quantile_edges(values, bins)
    counts = bin_counts(values, edges)
    keep = np.random.default_rng(seed).permutation(values.size)[:sample]
    return FeatureReference(kind="numeric", shares=(counts / counts.sum()).round(8).tolist(),
                            edges=[float(e) for e in edges], sample=[round(float(v), 6) for v in values[keep]])


def categorical_reference(values, categories: Sequence[str] = LABELS, sample: int = SAMPLE_SIZE,
                          seed: int = 0) -> FeatureReference:
    values = np.asarray(values)
    counts = category_counts(values, categories)
    keep = np.random.default_rng(seed).permutation(values.size)[:sample]
    return FeatureReference(kind="categorical", shares=(counts / counts.sum()).round(8).tolist(),
                            categories=list(categories), sample=[str(v) for v in values[keep]])


@dataclass(frozen=True)
class Features:
    """Per-instance drift features as columns (what a prediction record carries, minus ts/version)."""

    input_tokens: np.ndarray
    confidence: np.ndarray
    predicted_label: np.ndarray
    content: np.ndarray

    def __len__(self) -> int:
        return int(self.input_tokens.size)

    def column(self, name: str) -> np.ndarray:
        return getattr(self, name)


def features_from_predictions(input_tokens: Sequence[int], probability: Sequence[float],
                              content: Sequence[float]) -> Features:
    """Features from P(positive) and token statistics, exactly as the predictor records them: rounded to
    RECORD_DECIMALS like steps/serve/records.py, so a reference built from raw model outputs (evaluate) bins the
    same values the records carry (for a model whose confidences differ only past the 6th decimal, the unrounded
    reference and the rounded records drifted apart: PSI 1.5 on identical traffic)."""
    prob = np.round(np.asarray(probability, dtype=np.float64), RECORD_DECIMALS)
    return Features(input_tokens=np.asarray(input_tokens, dtype=np.float64),
                    confidence=np.round(np.maximum(prob, 1.0 - prob), RECORD_DECIMALS),
                    predicted_label=labels_of(prob),
                    content=np.round(np.asarray(content, dtype=np.float64), RECORD_DECIMALS))


def build_reference(features: Features, source: str = "", bins: int = NUMERIC_BINS) -> DriftReference:
    refs = {name: numeric_reference(features.column(name), bins)
            for name in ("input_tokens", "confidence", "content")}
    refs["predicted_label"] = categorical_reference(features.predicted_label)
    return DriftReference(rows=len(features), features={n: refs[n] for n in FEATURES}, source=source)


def window_psi(reference: DriftReference, features: Features) -> dict[str, float]:
    """PSI per feature of one window against the reference."""
    return {name: ref.psi(ref.counts(features.column(name))) for name, ref in reference.features.items()}
