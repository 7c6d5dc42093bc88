"""The rollout state machine over the KServe target with a fake API server (merge patches applied, each result
validated against the strict KServe CRD schema), a scripted Prometheus probe and a real MLflow registry (sqlite):
promote, roll back early, roll back for too little traffic, a crash between the patch and the decision, a crash
between the decision and its application, and idempotent re-runs."""
from __future__ import annotations

import copy
import itertools
from datetime import timedelta

import pytest

from sentimentops.steps.core.tracking import configure
from sentimentops.steps.rollout import kserve
from sentimentops.steps.rollout.controller import Controller, RolloutError, Timing
from sentimentops.steps.rollout.policy import Observation, RolloutPolicy, Side
from sentimentops.steps.rollout.registry import Registry
from sentimentops.steps.rollout.state import RolloutState
from tests.contract.test_rollout_kserve import ISVC, FakeCore, FakeCustomObjects


class Crash(Exception):
    pass


class Clock:
    """Fake time for state.elapsed_s: sleeping advances it."""

    def __init__(self, monkeypatch):
        import sentimentops.steps.rollout.state as state_mod

        self.t = 0.0
        base = state_mod.datetime.fromisoformat("2026-11-27T03:00:00+00:00")
        outer = self

        class FakeDatetime(state_mod.datetime):
            @classmethod
            def now(cls, tz=None):
                return base + timedelta(seconds=outer.t)

        monkeypatch.setattr(state_mod, "datetime", FakeDatetime)

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class ScriptedProbe:
    """Returns the canary side given per analysis; the stable side is always healthy."""

    def __init__(self, canary: list[Side], final: Side | None = None):
        self.canary, self.final, self.calls = list(canary), final, []

    def observe(self, stable, canary, *, window_s, elapsed_s):
        self.calls.append((stable, canary, round(window_s), round(elapsed_s)))
        side = self.final if (self.final and window_s > 100) else (self.canary.pop(0) if self.canary else
                                                                      self.final)
        return Observation(Side(1000, 0, 0.05), side, elapsed_s, window_s)


_names = itertools.count()


@pytest.fixture(scope="module")
def mlflow_home(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("mlflow") / "home")


@pytest.fixture()
def registry(mlflow_home, monkeypatch):
    """One sqlite database for the module (creating it costs seconds), a fresh registered model per test."""
    from sentimentops.steps.core.config import CommonSettings, load_settings
    from sentimentops.steps.core.tracking import experiment_id

    monkeypatch.setenv("SENTIMENTOPS_HOME", mlflow_home)
    monkeypatch.setenv("SENTIMENTOPS_PROFILE", "local")
    name = f"sentiment-{next(_names)}"
    settings = load_settings(CommonSettings, {"registered_model": name})
    client = configure(settings)
    client.create_registered_model(name)
    # The experiment gets its artifact root under SENTIMENTOPS_HOME (a bare create_experiment would default to
    # ./mlruns in the working directory, i.e. the checkout).
    run_id = client.create_run(experiment_id(settings)).info.run_id
    for i in range(2):  # the storage URI register records on each version (steps/register/cli.py)
        client.create_model_version(name, f"file:///models/{i}", run_id=run_id,
                                    tags={"storage_uri": f"gs://bucket/artifacts/models/m-{i + 1}/artifacts"})
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", "2")
    return Registry(settings)


def make(registry, probe, clock, mode="RawDeployment", hook=None):
    doc = copy.deepcopy(ISVC)
    doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
    doc["spec"]["predictor"]["labels"] = {"sentimentops.io/model-version": "1"}
    doc["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    custom, core = FakeCustomObjects(doc), FakeCore()
    target = kserve.KServeTarget("sentiment", "sentimentops", custom_api=custom, core_api=core)
    ctl = Controller(target, registry, probe, RolloutPolicy(), Timing(soak_s=300, interval_s=60, ready_timeout_s=30),
                     10, sleep=clock.sleep, crash_hook=hook or (lambda point: None), say=lambda line: None)
    return ctl, custom, core


HEALTHY, SLOW = Side(100, 0, 0.06), Side(100, 0, 0.30)


@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_healthy_canary_is_promoted_and_champion_moves(registry, monkeypatch, mode):
    clock = Clock(monkeypatch)
    ctl, custom, core = make(registry, ScriptedProbe([HEALTHY] * 4, final=Side(500, 0, 0.06)), clock, mode)
    state = ctl.run("challenger")
    assert (state.phase, state.decision) == ("promoted", "promote")
    assert kserve.served_version(custom.doc["spec"]["predictor"])[0] == "2"
    assert "canary" not in custom.doc["spec"] and "canaryTrafficPercent" not in custom.doc["spec"]["predictor"]
    assert registry.alias("champion") == "2"
    tags = registry.tags("2")
    assert tags["rollout.decision"] == "promote" and tags["rollout.state"] == "promoted"
    assert float(tags["rollout.decision_s"]) == pytest.approx(300)
    assert '"checks"' in tags["rollout.evidence"]
    run = registry.client.get_run(registry.client.get_model_version(registry.name, "2").run_id)
    assert run.data.tags["rollout.decision"] == "promote"
    assert [e[1]["reason"] for e in core.events] == ["CanaryDeployed", "CanaryPromoted"]
    # idempotent: a re-run changes nothing and raises nothing
    before = copy.deepcopy(custom.doc)
    assert ctl.run("challenger").phase == "promoted"
    assert custom.doc == before


def test_slow_canary_is_rolled_back_early_and_champion_stays(registry, monkeypatch):
    clock = Clock(monkeypatch)
    probe = ScriptedProbe([HEALTHY, SLOW, SLOW, HEALTHY])
    ctl, custom, core = make(registry, probe, clock)
    state = ctl.run("challenger")
    assert (state.phase, state.decision) == ("rolled-back", "rollback")
    assert "2 consecutive failing analyses" in state.reason and "+250 ms" in state.reason
    assert len(probe.calls) == 3 and clock.t == pytest.approx(180)  # early: 180 s of a 300 s soak
    assert "canary" not in custom.doc["spec"]
    assert kserve.served_version(custom.doc["spec"]["predictor"])[0] == "1"
    assert registry.alias("champion") == "1"
    tags = registry.tags("2")
    assert tags["rollout.champion"] == "untouched" and tags["rollout.state"] == "rolled-back"
    assert core.events[-1][1]["type"] == "Warning"


def test_too_little_canary_traffic_rolls_back_and_says_so(registry, monkeypatch):
    clock = Clock(monkeypatch)
    ctl, _, _ = make(registry, ScriptedProbe([Side(3, 0, 0.05)] * 5, final=Side(12, 0, 0.05)), clock)
    state = ctl.run("challenger")
    assert state.decision == "rollback" and "insufficient canary traffic" in state.reason


@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_crash_between_patch_and_decision_then_rerun_resumes_the_soak(registry, monkeypatch, mode):
    clock = Clock(monkeypatch)

    def crash(point):
        if point == "deployed":
            raise Crash(point)

    ctl, custom, core = make(registry, ScriptedProbe([HEALTHY] * 5, final=Side(500, 0, 0.06)), clock, mode, crash)
    with pytest.raises(Crash):
        ctl.run("challenger")
    crashed = RolloutState.from_annotations(custom.doc["metadata"]["annotations"])
    assert crashed.phase == "canary" and crashed.candidate_version == "2"
    clock.t += 120  # the pod restarts two minutes later
    ctl.crash_hook = lambda point: None
    state = ctl.run("challenger")
    assert state.phase == "promoted" and state.started == crashed.started  # the soak was not restarted
    assert clock.t == pytest.approx(300)
    assert [e[1]["reason"] for e in core.events].count("CanaryDeployed") == 1  # deployed once
    assert registry.alias("champion") == "2"


def test_crash_between_decision_and_rollback_applies_the_recorded_decision(registry, monkeypatch):
    clock = Clock(monkeypatch)

    def crash(point):
        if point == "decided":
            raise Crash(point)

    ctl, custom, _ = make(registry, ScriptedProbe([SLOW, SLOW]), clock, hook=crash)
    with pytest.raises(Crash):
        ctl.run("challenger")
    assert RolloutState.from_annotations(custom.doc["metadata"]["annotations"]).phase == "rolling-back"
    assert "canary" in custom.doc["spec"]  # not yet applied
    ctl.crash_hook = lambda point: None
    ctl.probe = ScriptedProbe([])  # a re-run must not re-analyse
    assert ctl.run("challenger").phase == "rolled-back"
    assert "canary" not in custom.doc["spec"] and registry.alias("champion") == "1"
    assert ctl.probe.calls == []


def test_promote_without_a_decision_is_refused_and_manual_rollback_works(registry, monkeypatch):
    clock = Clock(monkeypatch)
    ctl, _, _ = make(registry, ScriptedProbe([]), clock)
    ctl.deploy("2")
    with pytest.raises(RolloutError, match="no decision yet"):
        ctl.promote()
    state = ctl.rollback("operator abort")
    assert state.phase == "rolled-back" and state.reason == "operator abort"
    with pytest.raises(RolloutError, match="not 'promote'"):
        ctl.promote()


def test_a_new_candidate_supersedes_an_unfinished_one(registry, monkeypatch):
    clock = Clock(monkeypatch)
    ctl, _, _ = make(registry, ScriptedProbe([]), clock)
    ctl.deploy("2")
    registry.client.create_model_version(registry.name, "file:///models/3")
    state = ctl.deploy("3")
    assert state.candidate_version == "3" and registry.tags("2")["rollout.reason"].startswith("superseded")


def test_the_canary_serves_the_storage_uri_register_recorded(registry, monkeypatch):
    clock = Clock(monkeypatch)
    ctl, custom, _ = make(registry, ScriptedProbe([]), clock, "Serverless")
    state = ctl.deploy("challenger")
    assert state.candidate_uri == "gs://bucket/artifacts/models/m-2/artifacts"
    assert custom.doc["spec"]["predictor"]["model"]["storageUri"] == state.candidate_uri


def test_a_version_without_the_tag_falls_back_to_the_mapping_with_a_warning(registry, caplog):
    """Versions registered before register recorded `storage_uri` keep rolling out: the rollout maps the download
    URI itself (CommonSettings.storage_uri, the mapping register uses) and says so."""
    registry.client.create_model_version(registry.name, "file:///models/old")
    with caplog.at_level("WARNING"):
        version, uri = registry.resolve("3")
    assert (version, uri) == ("3", registry.client.get_model_version_download_uri(registry.name, "3"))
    assert "has no storage_uri tag" in caplog.text
    mapped = Registry(registry.settings.model_copy(update={"mlflow_artifacts_destination": "gs://b/artifacts"}))
    assert mapped.resolve("3")[1] == uri  # a file:// download URI is not a proxied one: unchanged


@pytest.mark.parametrize("download, destination, expected", [
    ("mlflow-artifacts:/1/models/m-abc/artifacts", "gs://b/artifacts", "gs://b/artifacts/1/models/m-abc/artifacts"),
    ("mlflow-artifacts://mlflow:5000/1/models/m-abc/artifacts", "gs://b/artifacts/",
     "gs://b/artifacts/1/models/m-abc/artifacts"),
    ("gs://b/x", "gs://other", "gs://b/x"),
    ("mlflow-artifacts:/1/x", "", "mlflow-artifacts:/1/x"),
])
def test_storage_uri_maps_the_proxied_artifact_store(download, destination, expected):
    from sentimentops.steps.core.config import CommonSettings

    assert CommonSettings(mlflow_artifacts_destination=destination).storage_uri(download) == expected
