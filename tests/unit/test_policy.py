"""The promotion policy's table: champion moves only past the baseline and the champion by the set margins."""
from __future__ import annotations

import math

import pytest

from sentimentops.steps.register.promotion import EvalMetrics, PolicySettings, decide

POLICY = PolicySettings(baseline_accuracy=0.80, min_gain_over_baseline=0.0, min_gain_over_champion=0.005,
                        max_f1_drop=0.01)


def m(acc: float, f1: float | None = None) -> EvalMetrics:
    return EvalMetrics(accuracy=acc, f1=acc if f1 is None else f1)


@pytest.mark.parametrize(
    ("case", "challenger", "champion", "kwargs", "promote", "reason_part"),
    [
        ("first model above baseline", m(0.85), None, {}, True, "no champion yet"),
        ("first model exactly at baseline", m(0.80), None, {}, True, "no champion yet"),
        ("first model below baseline", m(0.79), None, {}, False, "below the baseline"),
        ("beats champion by the margin", m(0.90), m(0.895), {}, True, "beats the champion"),
        ("beats champion by less than the margin", m(0.899), m(0.895), {}, False, "gain over the champion"),
        ("ties the champion", m(0.90), m(0.90), {}, False, "gain over the champion"),
        ("worse than champion", m(0.85), m(0.90), {}, False, "gain over the champion"),
        ("better accuracy but F1 collapses", m(0.92, 0.80), m(0.90, 0.90), {}, False, "F1"),
        ("F1 drop within tolerance", m(0.92, 0.895), m(0.90, 0.90), {}, True, "beats the champion"),
        ("beats champion but not baseline", m(0.75), m(0.70), {}, False, "below the baseline"),
        ("NaN accuracy", m(math.nan), None, {}, False, "not finite"),
        ("missing F1", EvalMetrics.from_mapping({"accuracy": 0.9}), None, {}, False, "not finite"),
        ("champion could not be scored", m(0.85), EvalMetrics(accuracy=math.nan, f1=math.nan), {}, True,
         "could not be scored"),
        ("already champion (re-run after crash)", m(0.85), m(0.85), {"challenger_is_champion": True}, True,
         "already the champion"),
    ],
)
def test_promotion_table(case, challenger, champion, kwargs, promote, reason_part):
    decision = decide(challenger, champion, POLICY, **kwargs)
    assert decision.promote is promote, case
    assert reason_part in decision.summary(), (case, decision.summary())


def test_margin_over_baseline_is_applied():
    strict = POLICY.model_copy(update={"min_gain_over_baseline": 0.05})
    assert not decide(m(0.84), None, strict).promote
    assert decide(m(0.85), None, strict).promote


def test_every_check_is_recorded():
    decision = decide(m(0.92, 0.80), m(0.90, 0.90), POLICY)
    assert decision.checks == {"beats_baseline": True, "beats_champion": True, "f1_within_tolerance": False}


def test_metrics_from_an_evaluate_manifest_or_registry_tags():
    assert EvalMetrics.from_mapping({"test_accuracy": 0.9, "test_f1": 0.8, "test_roc_auc": 0.95}, "test_") == \
        EvalMetrics(0.9, 0.8, 0.95)
    tags = EvalMetrics.from_mapping({"test_accuracy": "0.900000", "test_f1": "oops"}, "test_")
    assert tags.accuracy == 0.9 and math.isnan(tags.f1) and math.isnan(tags.roc_auc)
