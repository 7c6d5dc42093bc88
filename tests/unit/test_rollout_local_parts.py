"""Pieces of the local target without processes: the router's seeded weighted split and its reload on a state
change, the Prometheus target groups, the PromQL, the duration flags, and the Prometheus client's error paths."""
from __future__ import annotations

import json
import os
import time

import pytest

from sentimentops.steps.rollout.analysis import Prometheus, PrometheusError, mirror_queries, queries
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
    assert routes.mirror_percent == 0 and not any(routes.mirror() for _ in range(100))  # off unless asked
    assert 400 <= picks.count("canary") <= 600  # 10% +- 2 points
    again = Routes(state, seed=3)
    assert [again.pick()[0] for _ in range(50)] == picks[:50]  # seeded: the same split every run
    write_routes(state, 0, canary=None)
    os.utime(state, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a distinct mtime on coarse clocks
    assert {routes.pick() for _ in range(200)} == {("stable", "http://127.0.0.1:1")}


def test_router_mirrors_its_share_without_changing_the_split(tmp_path):
    state = tmp_path / "state.json"
    write_routes(state, 10)
    plain = [Routes(state, seed=3).pick()[0] for _ in range(1)]
    data = json.loads(state.read_text())
    data["routes"]["mirror_percent"] = 25
    state.write_text(json.dumps(data))
    routes, reference = Routes(state, seed=3), Routes(state, seed=3)
    picks, mirrored = [], 0
    for _ in range(4000):
        picks.append(routes.pick()[0])
        mirrored += routes.mirror()
    assert 900 <= mirrored <= 1100  # 25% +- 2.5 points
    assert picks == [reference.pick()[0] for _ in range(4000)] and picks[:1] == plain  # the split is unchanged


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


def test_promql_of_the_quality_checks():
    q = queries("4", 60, extra={"namespace": "sentimentops"})
    assert q["feedback_total"] == ('sum(increase(sentiment_feedback_total{model_version="4",'
                                   'namespace="sentimentops"}[60s]))')
    assert q["feedback_correct"] == ('sum(increase(sentiment_feedback_total{model_version="4",'
                                     'namespace="sentimentops",correct="true"}[60s]))')
    m = mirror_queries("1", "2", 90.5, extra={"job": "sentiment-local"})
    assert m == {"mirrored_total": 'sum(increase(sentiment_mirror_total{canary="2",job="sentiment-local",'
                                   'stable="1"}[91s]))',
                 "mirrored_agree": 'sum(increase(sentiment_mirror_total{canary="2",job="sentiment-local",'
                                   'stable="1",agree="true"}[91s]))'}


def test_local_routes_carry_versions_and_the_mirror_share(tmp_path):
    target = LocalTarget(tmp_path, mirror_percent=25)
    data = {"stable": {"version": "1", "port": 1111, "pid": 0, "url": "http://127.0.0.1:1111"},
            "canary": {"version": "2", "port": 2222, "pid": 0, "url": "http://127.0.0.1:2222"},
            "router": {"port": 3333, "pid": 0, "url": "http://127.0.0.1:3333"}}
    assert target._routes(data, 10) == {"stable": "http://127.0.0.1:1111", "stable_version": "1",
                                        "canary": "http://127.0.0.1:2222", "canary_version": "2",
                                        "canary_percent": 10, "mirror_percent": 25}
    # no canary (up, promote, rollback): nothing to split or mirror
    assert target._routes(data)["canary"] is None and target._routes(data)["mirror_percent"] == 0
    # a canary at 0% with mirroring: a shadow that answers only the copies
    assert target._routes(data, 0) | {"stable": None} == {"stable": None, "stable_version": "1",
                                                           "canary": "http://127.0.0.1:2222", "canary_version": "2",
                                                           "canary_percent": 0, "mirror_percent": 25}
    target.write(data)
    groups = json.loads((tmp_path / "targets.json").read_text())
    # Prometheus scrapes the router too, on its own metrics path (its /metrics is proxied like any request)
    assert groups[-1] == {"targets": ["127.0.0.1:3333"],
                          "labels": {"role": "router", "__metrics_path__": "/_router/metrics"}}


@pytest.mark.parametrize("text, value", [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("45", 45), (10, 10)])
def test_durations(text, value):
    assert seconds(text) == value


def test_bad_duration_and_unreachable_prometheus_are_clear_errors():
    with pytest.raises(ValueError, match="not a duration"):
        seconds("30 minutes")
    with pytest.raises(PrometheusError):
        Prometheus("http://127.0.0.1:9", timeout_s=1).query("up")


def test_the_evidence_tag_always_holds_the_final_judgement():
    from sentimentops.steps.rollout.registry import TAG_MAX, compact_evidence

    small = {"decision": "promote", "final": {"checks": []}, "analyses": [], "policy": {}}
    assert json.loads(compact_evidence(small)) == small
    # a long soak: dozens of analyses, each with every check, do not fit a tag; the final judgement does
    big = {**small, "final": {"checks": ["c" * 200] * 5}, "analyses": [{"checks": ["c" * 200] * 5}] * 30}
    tag = compact_evidence(big)
    assert len(tag) <= TAG_MAX and json.loads(tag)["final"] == big["final"]
    assert "analyses" not in json.loads(tag) and "run artifact" in json.loads(tag)["omitted"]
