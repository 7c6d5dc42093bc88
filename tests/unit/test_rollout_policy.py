"""The canary policy table (steps/rollout/policy.py): every rule of the runbook, its guards, and the decision over
a soak. Pure: no Prometheus, no clock."""
from __future__ import annotations

import math

import pytest

from sentimentops.steps.rollout.policy import Observation, RolloutPolicy, Side, decide, judge

POLICY = RolloutPolicy()
SOAK = 1800.0


def obs(canary: Side, stable: Side | None = None, *, elapsed: float = 600, psi: float | None = None) -> Observation:
    return Observation(stable=stable or Side(1000, 0, 0.050), canary=canary, elapsed_s=elapsed, window_s=60,
                       canary_psi=psi)


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
    assert record["canary"] == {"requests": 200, "errors": 10, "error_ratio": 0.05, "p99_s": 0.2}


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
