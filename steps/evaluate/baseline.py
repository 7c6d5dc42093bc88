"""The classical baseline the transformer must beat: TF-IDF word 1-2 grams + logistic regression (issue 14).

A fine-tuned transformer costs a GPU to train and tens of milliseconds a review to serve; on IMDB a linear model over
TF-IDF n-grams reaches the high 80s in a couple of seconds on a CPU. Fitted on the same training rows and scored on
the same held-out test rows as the challenger, it says whether the transformer earns its cost: evaluate reports it,
and the promotion policy can gate on it (register/promotion.py, `min_gain_over_tfidf`).

The baseline decides with the project's one rule (contract.class_ids_of on P(positive)) and is scored by the very
metrics function the challenger is scored by. That function lives in evaluate's cli.py, which will import this
module: importing it back would close an import cycle (tests/contract/test_layout.py), so the caller passes it in
(`metrics=compute_metrics`); nothing is re-implemented here.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from sentimentops.steps.core.contract import class_ids_of

NAME = "tfidf-logreg"
# IMDB reviews carry HTML line breaks (`<br /><br />` in ~57% of them): as tokens they would be `br` bigrams that
# say nothing about sentiment but take feature weight.
_BREAKS = re.compile(r"<br\s*/?>", re.IGNORECASE)


class Scored(Protocol):
    """What the metrics function returns (evaluate.cli.Metrics): the fields the baseline reports."""

    accuracy: float
    f1: float
    roc_auc: float
    rows: int


MetricsFn = Callable[[np.ndarray, np.ndarray], Scored]


@dataclass(frozen=True)
class BaselineResult:
    """The baseline on the held-out test rows: its metrics, its size and cost, and how it was built."""

    name: str
    accuracy: float
    f1: float
    roc_auc: float
    rows: int
    train_rows: int
    fit_seconds: float
    # Share of test rows decided positive by the contract's rule: a baseline that collapsed onto one class shows here.
    predicted_positive_rate: float = float("nan")
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """For metrics.json (key `baseline`): plain JSON types, NaN as None."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}

    def flat_metrics(self) -> dict[str, float]:
        """For MLflow and the evaluate manifest: `tfidf_test_accuracy` is the key the promotion policy reads."""
        values = {"tfidf_test_accuracy": self.accuracy, "tfidf_test_f1": self.f1, "tfidf_test_roc_auc": self.roc_auc,
                  "tfidf_fit_seconds": self.fit_seconds}
        return {k: float(v) for k, v in values.items() if np.isfinite(v)}


def strip_markup(text: str) -> str:
    """The vectorizer's preprocessor: HTML line breaks to spaces, then lower case (a custom preprocessor replaces
    scikit-learn's own lower-casing, so it is done here). Module-level so the fitted vectorizer pickles."""
    return _BREAKS.sub(" ", text).lower()


def baseline_params(seed: int = 42) -> dict[str, Any]:
    """The baseline's settings, recorded with its result. min_df=2 drops hapaxes (mostly typos and names), which
    halves the vocabulary on 2k reviews without costing accuracy; C=4 regularises less than the default 1, since
    TF-IDF rows are L2-normalised and small; liblinear is deterministic for a fixed random_state."""
    return {"ngram_range": [1, 2], "sublinear_tf": True, "min_df": 2, "strip": "<br />", "C": 4.0,
            "solver": "liblinear", "max_iter": 1000, "seed": seed}


def _check(texts: Sequence[str], labels: np.ndarray, what: str) -> None:
    if len(texts) != len(labels):
        raise ValueError(f"{what}: {len(texts)} texts but {len(labels)} labels")
    if len(texts) == 0:
        raise ValueError(f"{what}: no rows")
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise ValueError(f"{what}: labels must be 0/1, got {sorted(set(np.unique(labels).tolist()))[:5]}")


def fit_tfidf_baseline(train_texts: Sequence[str], train_labels: Sequence[int] | np.ndarray,
                       test_texts: Sequence[str], test_labels: Sequence[int] | np.ndarray, *,
                       metrics: MetricsFn, seed: int = 42) -> BaselineResult:
    """Fits TF-IDF + logistic regression on the training rows, scores P(positive) on the test rows and measures it
    with `metrics` (evaluate.cli.compute_metrics: the challenger's own function, decided by contract.class_ids_of).

    Deterministic for a given seed (every number but `fit_seconds`). Raises ValueError on mismatched lengths, empty
    splits, labels other than 0/1, or a training split with one class (a classifier cannot be fitted on it)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    y_train = np.asarray(train_labels, dtype=np.int64)
    y_test = np.asarray(test_labels, dtype=np.int64)
    _check(train_texts, y_train, "train")
    _check(test_texts, y_test, "test")
    if len(np.unique(y_train)) < 2:
        raise ValueError("train: one class only; the baseline needs both labels")
    params = baseline_params(seed)
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(preprocessor=strip_markup, ngram_range=(1, 2), sublinear_tf=True,
                                 min_df=params["min_df"], dtype=np.float64)
    features = vectorizer.fit_transform(list(train_texts))
    model = LogisticRegression(C=params["C"], solver=params["solver"], max_iter=params["max_iter"],
                               random_state=seed)
    model.fit(features, y_train)
    fit_seconds = time.perf_counter() - started
    positive = list(model.classes_).index(1)
    probs = model.predict_proba(vectorizer.transform(list(test_texts)))[:, positive]
    scored = metrics(y_test, probs)
    return BaselineResult(name=NAME, accuracy=float(scored.accuracy), f1=float(scored.f1),
                          roc_auc=float(scored.roc_auc), rows=int(scored.rows), train_rows=len(y_train),
                          fit_seconds=round(fit_seconds, 3),
                          predicted_positive_rate=float(class_ids_of(probs).mean()),
                          params={**params, "vocabulary": len(vectorizer.vocabulary_)})
