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


# ---------------------------------------------------------------------------------- the production slice (issue 15)
def pm(acc: float, prod: float = math.nan, rows: float = 200, f1: float | None = None) -> EvalMetrics:
    return EvalMetrics(accuracy=acc, f1=acc if f1 is None else f1, production_accuracy=prod, production_rows=rows)


SLICE = POLICY.model_copy(update={"max_test_accuracy_drop": 0.01, "max_production_accuracy_drop": 0.01,
                                  "min_production_rows": 50})
BOTH = {"beats_baseline": True, "test_not_worse": True, "production_not_worse": True, "beats_champion": True,
        "f1_within_tolerance": True}


@pytest.mark.parametrize(
    ("case", "challenger", "champion", "promote", "reason_part", "failed"),
    [
        ("gains on production, test within its margin", pm(0.895, 0.80), pm(0.90, 0.70), True,
         "+0.1000 on production", set()),
        ("gains on test, production unchanged", pm(0.91, 0.70), pm(0.90, 0.70), True, "+0.0100 accuracy on test",
         set()),
        ("gains on production, test regresses past its margin", pm(0.88, 0.80, f1=0.90), pm(0.90, 0.70), False,
         "test accuracy 0.8800 falls more than 0.0100", {"test_not_worse"}),
        ("gains on test, production regresses past its margin", pm(0.95, 0.68), pm(0.90, 0.70), False,
         "production accuracy 0.6800 falls more than 0.0100", {"production_not_worse"}),
        ("both regress", pm(0.85, 0.60, f1=0.90), pm(0.90, 0.70), False, "neither reaches",
         {"test_not_worse", "production_not_worse", "beats_champion"}),
        ("gain on neither, both within their margins", pm(0.902, 0.702), pm(0.90, 0.70), False, "neither reaches",
         {"beats_champion"}),
        ("production gain but F1 collapses", pm(0.90, 0.80, f1=0.70), pm(0.90, 0.70, f1=0.90), False, "F1",
         {"f1_within_tolerance"}),
        # The loop's case: a point of test accuracy given up for the traffic, F1 moving a little more with it.
        ("test loses exactly its margin, F1 a half point more", pm(0.89, 0.80, f1=0.885), pm(0.90, 0.70, f1=0.90),
         True, "+0.1000 on production", set()),
        ("test loses just past its margin", pm(0.8899, 0.80), pm(0.90, 0.70), False,
         "test accuracy 0.8899 falls more than 0.0100", {"test_not_worse"}),
        ("F1 past both allowances", pm(0.895, 0.80, f1=0.8699), pm(0.90, 0.70, f1=0.90), False, "F1",
         {"f1_within_tolerance"}),
    ],
)
def test_production_slice_table(case, challenger, champion, promote, reason_part, failed):
    decision = decide(challenger, champion, SLICE)
    assert decision.promote is promote, (case, decision.summary())
    assert reason_part in decision.summary(), (case, decision.summary())
    assert decision.checks == {**BOTH, **dict.fromkeys(failed, False)}, case


@pytest.mark.parametrize(
    ("case", "challenger", "champion"),
    [
        ("no slice at all", pm(0.899), pm(0.895)),
        ("only the challenger was scored on a slice", pm(0.899, 0.95), pm(0.895)),
        ("slice below min_production_rows", pm(0.899, 0.95, rows=49), pm(0.895, 0.70, rows=49)),
    ],
)
def test_without_a_judged_slice_the_decision_is_todays(case, challenger, champion):
    today = decide(m(challenger.accuracy), m(champion.accuracy), SLICE)
    decision = decide(challenger, champion, SLICE)
    assert (decision.promote, decision.checks) == (today.promote, today.checks), case
    assert not decision.promote  # 0.004 < the 0.005 margin on test; the big slice gain does not count here
    if case.startswith("slice below"):
        assert "production slice of 49 rows < min_production_rows 50: reported, not judged" in decision.summary()


def test_production_numbers_from_an_evaluate_manifest_and_registry_tags():
    metrics = {"test_accuracy": 0.9, "test_f1": 0.9, "production_accuracy": 0.8, "production_rows": 120.0,
               "champion_test_accuracy": 0.88, "champion_test_f1": 0.88, "champion_production_accuracy": 0.7}
    mine = EvalMetrics.from_mapping(metrics, "test_")
    theirs = EvalMetrics.from_mapping(metrics, "champion_test_")
    assert (mine.production_accuracy, mine.production_rows) == (0.8, 120.0)
    assert theirs.production_accuracy == 0.7
    assert decide(mine, theirs, SLICE).checks["production_not_worse"]
    assert math.isnan(EvalMetrics.from_mapping({"test_accuracy": "0.9"}, "test_").production_accuracy)


def test_the_slice_margins_are_policy_settings_with_defaults():
    policy = PolicySettings()
    assert (policy.max_test_accuracy_drop, policy.max_production_accuracy_drop, policy.min_production_rows) == \
        (0.01, 0.01, 50)


def test_register_reads_both_models_production_numbers_from_the_evaluate_manifest():
    from types import SimpleNamespace

    from sentimentops.steps.core.manifests import EvaluateManifest
    from sentimentops.steps.register.cli import PRODUCTION_TAGS, challenger_metrics, champion_metrics

    evaluation = EvaluateManifest.model_validate({
        "step": "evaluate", "created": "2026-01-01T00:00:00+00:00", "git_sha": "", "image": "",
        "refs": {"mlflow_run_id": "r", "champion_version": "3"},
        "metrics": {"test_accuracy": 0.9, "test_f1": 0.9, "test_roc_auc": 0.95, "champion_test_accuracy": 0.9,
                    "champion_test_f1": 0.9, "champion_test_roc_auc": 0.95, "production_accuracy": 0.85,
                    "production_f1": 0.84, "production_rows": 200.0, "champion_production_accuracy": 0.7}})
    mine = challenger_metrics(evaluation)
    theirs = champion_metrics(evaluation, SimpleNamespace(version=3, tags={}))
    assert (mine.production_accuracy, theirs.production_accuracy, theirs.production_rows) == (0.85, 0.7, 200.0)
    decision = decide(mine, theirs, PolicySettings(min_gain_over_champion=0.005))
    assert decision.promote and decision.checks["production_not_worse"]  # ties on test, gains on production
    # a champion evaluate did not score: its registry tags were measured on another slice, so no slice comparison
    moved = champion_metrics(evaluation, SimpleNamespace(version=4, tags={"test_accuracy": "0.88", "test_f1": "0.88",
                                                                           "production_accuracy": "0.99"}))
    assert math.isnan(moved.production_accuracy) and moved.accuracy == 0.88
    assert set(PRODUCTION_TAGS) <= set(evaluation.metrics.model_dump())
