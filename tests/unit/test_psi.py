"""sentimentops.steps.core.psi: the pure PSI/binning core (reference file round trip, bins, the content signal)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sentimentops.steps.core.contract import content_share
from sentimentops.steps.core.psi import (
    EPS,
    DriftReference,
    bin_counts,
    build_reference,
    category_counts,
    features_from_predictions,
    psi,
    quantile_edges,
    window_psi,
)


def test_psi_of_identical_distributions_is_zero_and_grows_with_shift():
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(ref, ref) == pytest.approx(0.0)
    small = psi(ref, np.array([0.3, 0.25, 0.25, 0.2]))
    large = psi(ref, np.array([0.7, 0.1, 0.1, 0.1]))
    assert 0 < small < 0.05
    assert large > 0.2


def test_psi_known_value_label_prior_moved_to_90_percent():
    # (0.9-0.5) ln(0.9/0.5) + (0.1-0.5) ln(0.1/0.5) = 0.2351 + 0.6438
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.8789, abs=1e-4)


def test_empty_bin_is_floored_not_infinite():
    value = psi([0.5, 0.5, 0.0], [0.5, 0.0, 0.5])
    assert np.isfinite(value) and value > 1.0
    assert psi([1, 1], [2, 2]) == pytest.approx(0.0)  # counts are normalised
    assert EPS == 1e-4


def test_psi_refuses_different_bins():
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [0.3, 0.3, 0.4])


def test_quantile_edges_collapse_ties_and_leave_no_empty_reference_bin():
    # token counts piled at the 512 truncation limit (15% of IMDB, docs/measurements.md)
    values = np.concatenate([np.arange(20, 420), np.full(300, 512)])
    edges = quantile_edges(values, 10)
    assert list(edges) == sorted(set(edges))
    counts = bin_counts(values, edges)
    assert counts.sum() == values.size and (counts > 0).all()
    assert edges[-1] == 512  # the truncated reviews get a bin of their own


def test_constant_feature_gives_one_or_two_bins_without_empty_ones():
    counts = bin_counts(np.ones(50), quantile_edges(np.ones(50)))
    assert counts.sum() == 50 and (counts > 0).all()


def test_bins_are_left_closed():
    assert bin_counts(np.array([0.0, 1.0, 1.5, 2.0, 9.0]), np.array([1.0, 2.0])).tolist() == [1, 2, 2]


def test_unknown_category_gets_its_own_bin():
    assert category_counts(["negative", "positive", "neutral"], ["negative", "positive"]).tolist() == [1, 1, 1]


def test_content_share_ignores_special_tokens():
    tokens = ["[CLS]", "un", "##believ", "##able", "film", "[SEP]"]
    assert content_share(tokens, [1, 0, 0, 0, 0, 1]) == pytest.approx(0.5)
    assert content_share(["[CLS]", "[SEP]"], [1, 1]) == 0.0


def _features(rng, n, length_mean=230.0, p_positive=0.5):
    tokens = np.clip(rng.lognormal(np.log(length_mean), 0.6, n), 5, 512).round()
    positive = rng.random(n) < p_positive
    prob = np.where(positive, rng.beta(8, 2, n), rng.beta(2, 8, n))
    return features_from_predictions(tokens, prob, rng.beta(2, 20, n))


def test_reference_round_trips_through_json_and_detects_a_shift(tmp_path):
    rng = np.random.default_rng(0)
    reference = build_reference(_features(rng, 5000), source="unit")
    path = tmp_path / "drift_reference.json"
    reference.write(path)
    data = json.loads(path.read_text())
    assert set(data["features"]) == {"input_tokens", "confidence", "predicted_label", "content"}
    assert data["rows"] == 5000 and data["features"]["predicted_label"]["categories"] == ["negative", "positive"]
    loaded = DriftReference.read(path)
    same = window_psi(loaded, _features(rng, 500))
    assert max(same.values()) < 0.1, same
    short = window_psi(loaded, _features(rng, 500, length_mean=25))
    assert short["input_tokens"] > 0.2
    negative = window_psi(loaded, _features(rng, 500, p_positive=0.1))
    assert negative["predicted_label"] > 0.2 and negative["input_tokens"] < 0.1


def test_features_from_predictions_confidence_and_label():
    f = features_from_predictions([10, 20], [0.2, 0.9], [0.1, 0.0])
    assert f.confidence.tolist() == pytest.approx([0.8, 0.9])
    assert f.predicted_label.tolist() == ["negative", "positive"]
    assert len(f) == 2
