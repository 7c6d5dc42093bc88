"""Pieces of the local target without processes: the router's seeded weighted split and its reload on a state
change, the Prometheus target groups, the PromQL, the duration flags, and the Prometheus client's error paths."""
from __future__ import annotations

import json
import os
import time

import pytest

from sentimentops.steps.rollout.analysis import Prometheus, PrometheusError, queries
from sentimentops.steps.rollout.cli import seconds
from sentimentops.steps.rollout.local import LocalTarget
from sentimentops.steps.rollout.router import Routes
from sentimentops.steps.rollout.state import RolloutState


def write_routes(path, canary_percent: int, canary: str | None = "http://127.0.0.1:2") -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"routes": {"stable": "http://127.0.0.1:1", "canary": canary,
                                          "canary_percent": canary_percent}}))
    tmp.replace(path)


def test_router_sends_the_canary_share_and_follows_the_state_file(tmp_path):
    state = tmp_path / "state.json"
    write_routes(state, 10)
    routes = Routes(state, seed=3)
    picks = [routes.pick()[0] for _ in range(5000)]
    assert 400 <= picks.count("canary") <= 600  # 10% +- 2 points
    again = Routes(state, seed=3)
    assert [again.pick()[0] for _ in range(50)] == picks[:50]  # seeded: the same split every run
    write_routes(state, 0, canary=None)
    os.utime(state, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a distinct mtime on coarse clocks
    assert {routes.pick() for _ in range(200)} == {("stable", "http://127.0.0.1:1")}


def test_local_state_writes_prometheus_targets_with_version_and_role(tmp_path):
    target = LocalTarget(tmp_path)
    target.write({"stable": {"version": "1", "port": 1111, "pid": 0}, "canary": {"version": "2", "port": 2222,
                                                                                "pid": 0}})
    groups = json.loads((tmp_path / "targets.json").read_text())
    assert groups == [{"targets": ["127.0.0.1:1111"], "labels": {"model_version": "1", "role": "stable"}},
                      {"targets": ["127.0.0.1:2222"], "labels": {"model_version": "2", "role": "canary"}}]
    state = RolloutState("2", "models:/sentiment/2", "1", "models:/sentiment/1", "canary", "2026-11-27T03:00:00+00:00",
                         10)
    target.save(state)
    assert target.load_state() == state and target.stable() == ("1", "models:/sentiment/1")


def test_promql_selects_by_model_version_and_counts_5xx_only():
    q = queries("4", 60, extra={"namespace": "sentimentops"})
    assert q["requests"] == 'sum(increase(sentiment_requests_total{model_version="4",namespace="sentimentops"}[60s]))'
    assert 'status=~"5..|429"' in q["errors"] and "histogram_quantile(0.99" in q["p99_s"]
    assert "sentiment_drift_psi" in q["psi"]


@pytest.mark.parametrize("text, value", [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("45", 45), (10, 10)])
def test_durations(text, value):
    assert seconds(text) == value


def test_bad_duration_and_unreachable_prometheus_are_clear_errors():
    with pytest.raises(ValueError, match="not a duration"):
        seconds("30 minutes")
    with pytest.raises(PrometheusError):
        Prometheus("http://127.0.0.1:9", timeout_s=1).query("up")
