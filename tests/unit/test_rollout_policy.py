"""The canary policy table (steps/rollout/policy.py): every rule of the runbook, its guards, the quality checks
(feedback accuracy, agreement on mirrored requests), and the decision over a soak. Pure: no Prometheus, no clock."""
from __future__ import annotations

import math

import pytest

from sentimentops.steps.rollout.policy import Observation, RolloutPolicy, Side, decide, judge

POLICY = RolloutPolicy()
SOAK = 1800.0


def obs(canary: Side, stable: Side | None = None, *, elapsed: float = 600, psi: float | None = None,
        mirrored: tuple[float, float] = (0, 0)) -> Observation:
    return Observation(stable=stable or Side(1000, 0, 0.050), canary=canary, elapsed_s=elapsed, window_s=60,
                       canary_psi=psi, mirrored_agree=mirrored[0], mirrored_total=mirrored[1])


def status(o: Observation) -> dict[str, str]:
    return {c.name: c.status for c in judge(o, POLICY).checks}


@pytest.mark.parametrize("canary, stable, psi, elapsed, expected", [
    # healthy: same errors and latency
    (Side(100, 0, 0.050), None, 0.05, 600, {"error_ratio": "pass", "latency_p99": "pass", "drift_psi": "pass"}),
    # error ratio: 5% against a clean stable fails; 1 error in 100 (1%) is at the floor: passes
    (Side(100, 5, 0.050), None, None, 600, {"error_ratio": "fail", "latency_p99": "pass", "drift_psi": "no_data"}),
    (Side(100, 1, 0.050), None, None, 600, {"error_ratio": "pass"}),
    # one error in a quiet window: 2.5% but the window has 40 requests: fails only above the floor (it is above)
    (Side(40, 1, 0.050), None, None, 600, {"error_ratio": "fail"}),
    # 50% above stable is the limit: stable 4%, canary 6% passes (= 1.5x), 6.5% fails
    (Side(1000, 60, 0.05), Side(1000, 40, 0.05), None, 600, {"error_ratio": "pass"}),
    (Side(1000, 65, 0.05), Side(1000, 40, 0.05), None, 600, {"error_ratio": "fail"}),
    # latency: +150 ms fails, +100 ms is the limit (passes), +90 ms passes
    (Side(100, 0, 0.200), None, None, 600, {"latency_p99": "fail"}),
    (Side(100, 0, 0.150), None, None, 600, {"latency_p99": "pass"}),
    (Side(100, 0, 0.140), None, None, 600, {"latency_p99": "pass"}),
    # a faster canary is never a failure
    (Side(100, 0, 0.001), None, None, 600, {"latency_p99": "pass"}),
    # too few canary requests: errors and latency are not judged at all
    (Side(10, 5, 0.900), None, None, 600, {"error_ratio": "no_data", "latency_p99": "no_data"}),
    # NaN p99 (Prometheus on an empty histogram) is no data, not a pass or a crash
    (Side(100, 0, math.nan), None, None, 600, {"latency_p99": "no_data"}),
    (Side(100, 0, 0.05), Side(0, 0, None), None, 600, {"latency_p99": "no_data", "error_ratio": "pass"}),
    # drift: > 0.3 in the first hour fails; 0.3 passes; after the first hour it is not judged
    (Side(100, 0, 0.05), None, 0.31, 600, {"drift_psi": "fail"}),
    (Side(100, 0, 0.05), None, 0.30, 600, {"drift_psi": "pass"}),
    (Side(100, 0, 0.05), None, 0.90, 3700, {"drift_psi": "no_data"}),
    # drift is judged whatever the traffic
    (Side(3, 0, None), None, 0.5, 60, {"drift_psi": "fail", "error_ratio": "no_data"}),
])
def test_judge_table(canary, stable, psi, elapsed, expected):
    got = status(obs(canary, stable, psi=psi, elapsed=elapsed))
    assert {k: got[k] for k in expected} == expected


def test_every_check_records_value_limit_and_detail():
    judgement = judge(obs(Side(200, 10, 0.200), psi=0.1), POLICY)
    record = judgement.to_dict()
    by_name = {c["name"]: c for c in record["checks"]}
    assert by_name["error_ratio"]["value"] == pytest.approx(0.05)
    assert by_name["error_ratio"]["limit"] == pytest.approx(0.01)
    assert by_name["latency_p99"]["value"] == pytest.approx(0.15)
    assert "+150 ms > 100 ms" in by_name["latency_p99"]["detail"]
    assert record["canary"] == {"requests": 200, "errors": 10, "error_ratio": 0.05, "p99_s": 0.2,
                                "feedback_correct": 0, "feedback_total": 0, "feedback_accuracy": None}


HEALTHY, SLOW, FEW = Side(100, 0, 0.05), Side(100, 0, 0.30), Side(5, 0, 0.05)


def run(sides: list[Side], *, overall: Side | None = None, interval: float = 300):
    history = [judge(obs(s, elapsed=interval * (i + 1)), POLICY) for i, s in enumerate(sides)]
    final = judge(obs(overall, elapsed=interval * len(sides)), POLICY) if overall else None
    return decide(history, POLICY, soak_s=SOAK, overall=final)


@pytest.mark.parametrize("sides, overall, action, reason", [
    # soaking, all well: continue
    ([HEALTHY, HEALTHY], None, "continue", "soaking"),
    # one bad window is not enough for an early rollback (failure_limit 2)...
    ([HEALTHY, SLOW], None, "continue", "soaking"),
    ([SLOW, HEALTHY, SLOW], None, "continue", "soaking"),
    # ...two consecutive are
    ([HEALTHY, SLOW, SLOW], None, "rollback", "2 consecutive failing analyses"),
    # the soak completes with every check passing: promote
    ([HEALTHY] * 6, HEALTHY, "promote", "passed"),
    # the soak completes but the whole soak fails a check: rollback
    ([HEALTHY] * 5 + [SLOW], SLOW, "rollback", "failed"),
    # the soak completes with too little canary traffic: rollback, and say so
    ([FEW] * 6, FEW, "rollback", "insufficient canary traffic"),
    # no analysis yet: continue
    ([], None, "continue", "soaking"),
])
def test_decide_over_the_soak(sides, overall, action, reason):
    verdict = run(sides, overall=overall)
    assert verdict.action == action
    assert reason in verdict.reason
    assert len(verdict.history) == len(sides)


def test_without_an_overall_judgement_the_last_analysis_decides_at_the_end():
    assert run([HEALTHY] * 6).action == "promote"
    assert run([HEALTHY] * 5 + [FEW]).action == "rollback"


def test_policy_is_configurable_and_validated():
    strict = RolloutPolicy(failure_limit=1, min_canary_requests=5)
    history = [judge(obs(Side(5, 0, 0.3)), strict)]
    assert decide(history, strict, soak_s=SOAK).action == "rollback"
    with pytest.raises(ValueError):
        RolloutPolicy(min_error_ratio=2)


# ---- quality: feedback accuracy and agreement ------------------------------------------------------------------

def labelled(correct: float, total: float, requests: float = 1000) -> Side:
    return Side(requests, 0, 0.05, feedback_correct=correct, feedback_total=total)


@pytest.mark.parametrize("canary, stable, expected, value", [
    # equal accuracy on enough labels: pass, drop 0
    (labelled(340, 400), labelled(340, 400), "pass", 0.0),
    # a better canary is never a failure (negative drop)
    (labelled(380, 400), labelled(340, 400), "pass", -0.1),
    # 5 points below is the limit (passes); 6 points below fails
    (labelled(320, 400), labelled(340, 400), "pass", 0.05),
    (labelled(316, 400), labelled(340, 400), "fail", 0.06),
    # a model that is fast and wrong: every latency and error check passes, feedback accuracy fails
    (labelled(200, 400), labelled(340, 400), "fail", 0.35),
    # few labels on either side: not judged, however bad it looks (the drop is still recorded)
    (labelled(10, 100), labelled(340, 400), "no_data", 0.75),
    (labelled(340, 400), labelled(300, 399), "no_data", 300 / 399 - 0.85),
    # no labels at all: no data, no value
    (labelled(0, 0), labelled(0, 0), "no_data", None),
])
def test_feedback_accuracy_table(canary, stable, expected, value):
    check = {c.name: c for c in judge(obs(canary, stable), POLICY).checks}["feedback_accuracy"]
    assert check.status == expected
    assert check.value == (pytest.approx(value) if isinstance(value, float) else value)
    assert check.limit == POLICY.max_feedback_accuracy_drop


@pytest.mark.parametrize("mirrored, expected", [
    ((180, 200), "pass"),  # 90%: a retrained model changes a few answers
    ((120, 200), "pass"),  # 60% is the limit
    ((118, 200), "fail"),  # 59%: below
    ((100, 200), "fail"),  # a random or constant canary on balanced traffic
    ((0, 250), "fail"),  # inverted labels
    ((10, 199), "no_data"),  # too few compared, however bad
    ((0, 0), "no_data"),  # nothing mirrored (mirroring off, or KServe)
])
def test_agreement_table(mirrored, expected):
    check = {c.name: c for c in judge(obs(HEALTHY, mirrored=mirrored), POLICY).checks}["agreement"]
    assert check.status == expected
    assert check.limit == POLICY.min_agreement
    assert check.value == (mirrored[0] / mirrored[1] if mirrored[1] else None)


GOOD, WRONG = labelled(340, 400), labelled(200, 400)


def quality_run(canaries: list[Side], overall: Side | None, policy: RolloutPolicy = POLICY, *,
                mirrored: tuple[float, float] = (0, 0)):
    history = [judge(obs(c, GOOD, elapsed=300 * (i + 1), mirrored=mirrored), policy) for i, c in enumerate(canaries)]
    final = judge(obs(overall, GOOD, elapsed=SOAK, mirrored=mirrored), policy) if overall else None
    return decide(history, policy, soak_s=SOAK, overall=final)


def test_early_rollback_on_quality():
    verdict = quality_run([GOOD, WRONG, WRONG], None)
    assert verdict.action == "rollback"
    assert "2 consecutive failing analyses" in verdict.reason and "feedback accuracy" in verdict.reason
    assert quality_run([GOOD, WRONG], None).action == "continue"  # one window is not enough
    broken = quality_run([GOOD, GOOD], None, mirrored=(90, 200))  # two windows with agreement 45%
    assert broken.action == "rollback" and "mirrored requests" in broken.reason


def test_final_verdict_on_quality():
    wrong = quality_run([GOOD] * 6, WRONG)
    assert wrong.action == "rollback" and "drop +35.0 points > 5" in wrong.reason
    good = quality_run([GOOD] * 6, GOOD, mirrored=(900, 1000))
    assert good.action == "promote"
    # the promotion names the quality evidence it rests on
    assert "feedback accuracy canary 85.0% of 400 labels vs stable 85.0% of 400" in good.reason
    assert "agrees with stable on 90.0% of 1000 mirrored requests" in good.reason


def test_require_quality():
    few = labelled(0, 0)
    # off (the default): quality is judged only where the evidence exists, and the reason says what was not judged
    lenient = quality_run([few] * 6, few)
    assert lenient.action == "promote" and "feedback_accuracy not judged" in lenient.reason
    assert "agreement not judged" in lenient.reason
    strict = RolloutPolicy(require_quality=True)
    unproven = quality_run([few] * 6, few, strict)
    assert unproven.action == "rollback" and "not proven on quality" in unproven.reason
    # one judged quality check is proof enough (in the cluster nothing mirrors: feedback alone must do)
    assert quality_run([few] * 6, GOOD, strict).action == "promote"
    assert quality_run([few] * 6, few, strict, mirrored=(900, 1000)).action == "promote"
    # a failing check still fails first
    assert "failed" in quality_run([few] * 6, WRONG, strict).reason


def test_quality_evidence_is_recorded_with_the_decision():
    verdict = quality_run([GOOD] * 6, labelled(330, 400), mirrored=(450, 500))
    record = verdict.judgement.to_dict()
    assert record["canary"]["feedback_accuracy"] == pytest.approx(0.825)
    assert record["canary"]["feedback_total"] == 400 and record["stable"]["feedback_correct"] == 340
    assert record["mirrored"] == {"agree": 450, "total": 500, "agreement": 0.9}
    by_name = {c["name"]: c for c in record["checks"]}
    assert by_name["feedback_accuracy"]["status"] == "pass"
    assert by_name["feedback_accuracy"]["value"] == pytest.approx(0.025)
    assert by_name["feedback_accuracy"]["limit"] == 0.05
    assert by_name["agreement"] == {"name": "agreement", "status": "pass", "value": 0.9, "limit": 0.6,
                                    "detail": "canary agrees with stable on 90.0% of 500 mirrored requests >= 60%"}
    assert all("feedback_accuracy" in [c["name"] for c in a["checks"]] for a in verdict.history)


def test_quality_thresholds_are_configurable_and_validated():
    loose = RolloutPolicy(min_feedback_labels=50, max_feedback_accuracy_drop=0.4, min_mirrored=10, min_agreement=0.3)
    checks = {c.name: c.status for c in judge(obs(labelled(30, 60), labelled(40, 60), mirrored=(5, 10)),
                                              loose).checks}
    assert checks["feedback_accuracy"] == "pass" and checks["agreement"] == "pass"
    for bad in ({"min_agreement": 1.5}, {"max_feedback_accuracy_drop": -0.1}, {"min_feedback_labels": 0},
                {"min_mirrored": 0}):
        with pytest.raises(ValueError):
            RolloutPolicy(**bad)
