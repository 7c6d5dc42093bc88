"""The promotion policy's table: champion moves only past the baseline and the champion by the set margins, and,
where the profile turns them on, past the TF-IDF baseline and the behavioural suite's pass rate."""
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


# ---------------------------------------------------------------------------------- the evidence gates (issue 14)
GATED = POLICY.model_copy(update={"min_gain_over_tfidf": 0.0, "min_behaviour_pass_rate": 0.8})


def ev(acc: float, tfidf: float = math.nan, behaviour: float = math.nan) -> EvalMetrics:
    return EvalMetrics(accuracy=acc, f1=acc, baseline_accuracy=tfidf, behaviour_pass_rate=behaviour)


@pytest.mark.parametrize(
    ("case", "challenger", "champion", "policy", "promote", "reason_part", "checks"),
    [
        ("gates off, evidence reported", ev(0.85, 0.84, 0.7), None, POLICY, True,
         "TF-IDF baseline 0.8400 (reported, not gated); behaviour pass rate 0.7000 (reported, not gated)",
         {"beats_baseline": True}),
        ("gates off, nothing measured: no evidence line", ev(0.85), None, POLICY, True,
         "baseline 0.8000; no champion yet", {"beats_baseline": True}),
        ("both gates met", ev(0.85, 0.84, 0.9), None, GATED, True,
         "accuracy 0.8500 >= TF-IDF baseline 0.8400 + margin 0.0000; behaviour pass rate 0.9000 >= 0.8000",
         {"beats_baseline": True, "beats_tfidf_baseline": True, "behaviour_pass_rate": True}),
        ("exactly at both gates", ev(0.84, 0.84, 0.8), None, GATED, True, "no champion yet",
         {"beats_baseline": True, "beats_tfidf_baseline": True, "behaviour_pass_rate": True}),
        ("TF-IDF beats the transformer", ev(0.83, 0.84, 0.9), None, GATED, False,
         "accuracy 0.8300 below the TF-IDF baseline 0.8400 + margin 0.0000",
         {"beats_baseline": True, "beats_tfidf_baseline": False}),
        ("TF-IDF baseline not measured", ev(0.90, math.nan, 0.9), None, GATED, False,
         "TF-IDF baseline accuracy is missing", {"beats_baseline": True, "beats_tfidf_baseline": False}),
        ("behaviour suite failing", ev(0.90, 0.84, 0.75), None, GATED, False,
         "behaviour pass rate 0.7500 below the required 0.8000",
         {"beats_baseline": True, "beats_tfidf_baseline": True, "behaviour_pass_rate": False}),
        ("behaviour suite not run", ev(0.90, 0.84), None, GATED, False, "behaviour pass rate is missing",
         {"beats_baseline": True, "beats_tfidf_baseline": True, "behaviour_pass_rate": False}),
        ("fixed floor first: below it, TF-IDF not even looked at", ev(0.79, math.nan, math.nan), None, GATED, False,
         "below the baseline 0.8000", {"beats_baseline": False}),
        ("gates before the champion: a missed gate refuses even a champion beater", ev(0.95, 0.96, 0.9),
         ev(0.85), GATED, False, "below the TF-IDF baseline", {"beats_baseline": True,
                                                               "beats_tfidf_baseline": False}),
        ("gates met, then the champion decides", ev(0.86, 0.84, 0.9), ev(0.90), GATED, False,
         "gain over the champion", {"beats_baseline": True, "beats_tfidf_baseline": True,
                                    "behaviour_pass_rate": True, "beats_champion": False,
                                    "f1_within_tolerance": False}),
        ("a margin over TF-IDF is applied", ev(0.86, 0.84, 0.9), None,
         GATED.model_copy(update={"min_gain_over_tfidf": 0.03}), False, "+ margin 0.0300",
         {"beats_baseline": True, "beats_tfidf_baseline": False}),
        ("already champion short-circuits the gates", ev(0.85), ev(0.85), GATED, True, "already the champion",
         {"already_champion": True}),
    ],
)
def test_evidence_gates(case, challenger, champion, policy, promote, reason_part, checks):
    is_champion = case.startswith("already champion")
    decision = decide(challenger, champion, policy, challenger_is_champion=is_champion)
    assert decision.promote is promote, (case, decision.summary())
    assert reason_part in decision.summary(), (case, decision.summary())
    assert decision.checks == checks, case


def test_the_gates_are_off_unless_set():
    assert PolicySettings().min_gain_over_tfidf is None and PolicySettings().min_behaviour_pass_rate is None


def test_a_misspelt_policy_key_is_an_error_not_a_silently_open_gate():
    with pytest.raises(ValueError, match="min_behavior_pass_rate"):
        PolicySettings.model_validate({"min_behavior_pass_rate": 0.8})


def test_evidence_from_an_evaluate_manifest():
    flat = {"test_accuracy": 0.9, "test_f1": 0.89, "tfidf_test_accuracy": 0.842, "behaviour_pass_rate": "0.95"}
    metrics = EvalMetrics.from_mapping(flat, "test_")
    assert (metrics.baseline_accuracy, metrics.behaviour_pass_rate) == (0.842, 0.95)
    missing = EvalMetrics.from_mapping({"test_accuracy": 0.9, "test_f1": 0.89}, "test_")
    assert math.isnan(missing.baseline_accuracy) and math.isnan(missing.behaviour_pass_rate)
