"""Settings precedence (flags > env > profile) and the manifest chain: hashing and typed stage manifests."""
from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from sentimentops.steps.core.config import PROFILES_DIR, CommonSettings, load_profile, load_settings
from sentimentops.steps.core.errors import DataError
from sentimentops.steps.core.manifests import (
    STAGE_MANIFESTS,
    EvaluateManifest,
    RolloutManifest,
    TrainManifest,
    hash_dir,
    manifest_model,
    read_manifest,
    write_manifest,
)
from sentimentops.steps.ingest import IngestSettings
from sentimentops.steps.train.cli import TrainSettings


def test_profile_then_env_then_flags(tmp_path):
    env = {"SENTIMENTOPS_HOME": str(tmp_path), "SENTIMENTOPS_TRAIN_EPOCHS": "3"}
    settings = load_settings(TrainSettings, {"batch_size": 8, "epochs": None}, env=env)
    assert settings.epochs == 3                       # env over the default
    assert settings.batch_size == 8                   # flag
    assert settings.fallback_base_model.startswith("package:")  # from profiles/local.yaml
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"  # {home} expanded
    assert load_settings(TrainSettings, {"epochs": 5}, env=env).epochs == 5


def test_gke_profile_has_no_offline_fallback(tmp_path):
    settings = load_settings(IngestSettings, env={"SENTIMENTOPS_PROFILE": "gke"})
    assert settings.allow_offline_fallback is False and settings.fallback_sources == []
    assert settings.mlflow_tracking_uri == ""  # the chart passes it (SENTIMENTOPS_MLFLOW_TRACKING_URI)


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile 'nope'.*known profiles: gke, local"):
        load_settings(CommonSettings, env={"SENTIMENTOPS_PROFILE": "nope"})


def test_invalid_value_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        load_settings(TrainSettings, {"epochs": 0}, env={"SENTIMENTOPS_HOME": str(tmp_path)})


STEPS = Path(__file__).resolve().parents[2] / "steps"


def settings_classes() -> list[type[CommonSettings]]:
    """Every settings class in steps/: found in the source (a class deriving from CommonSettings or from another
    settings class), then imported, so a new step's settings are covered without listing them here."""
    found: dict[str, str] = {}  # class name -> module
    trees = {path: ast.parse(path.read_text()) for path in STEPS.rglob("*.py")}
    names = {"CommonSettings"}
    while True:  # to a fixpoint: a settings class may derive from another one
        before = len(found)
        for path, tree in trees.items():
            module = ".".join(path.relative_to(STEPS.parent).with_suffix("").parts)
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", None)) in names
                                                          for b in node.bases):
                    found[node.name] = module
                    names.add(node.name)
        if len(found) == before:
            break
    classes = [getattr(importlib.import_module(module), name) for name, module in sorted(found.items())]
    assert all(issubclass(cls, CommonSettings) for cls in classes)
    return classes


def strings(value) -> list[str]:
    """Every string and path inside a dumped settings value."""
    if isinstance(value, str | Path):
        return [str(value)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list | tuple | set):
        return [s for v in value for s in strings(v)]
    return []


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_no_resolved_setting_of_any_settings_class_contains_home_placeholder(profile, tmp_path, monkeypatch):
    # Incident: RolloutSettings.local_dir's default "{home}/rollout/local" was never expanded (only values from the
    # profile/env/flags were), so `sentimentops rollout local up` made a literal `{home}/` folder in the working
    # directory, Prometheus read a doubled file_sd path and scraped nothing, and the canary was rolled back for
    # "insufficient canary traffic" while the load generator had sent it 124 requests.
    monkeypatch.chdir(tmp_path)  # the default home is relative to the working directory
    classes = settings_classes()
    assert {"RolloutSettings", "VersionSettings", "TrainSettings", "ServeSettings"} <= {c.__name__ for c in classes}
    for cls in classes:
        settings = load_settings(cls, env={"SENTIMENTOPS_PROFILE": profile})  # defaults: no SENTIMENTOPS_* override
        home = settings.home
        assert home.is_absolute() and (profile != "local" or home == (tmp_path / ".sentimentops").resolve())
        leftovers = [s for s in strings(settings.model_dump()) if "{home}" in s]
        assert leftovers == [], f"{cls.__name__} ({profile}): {leftovers}"
        sections = load_profile(profile)
        from_profile = {**(sections.get("common") or {}), **(sections.get(cls.section) or {})}
        for name, field in cls.model_fields.items():  # each {home} default the profile keeps, under the home
            if "{home}" in str(field.default) and name not in from_profile:
                assert str(getattr(settings, name)) == str(field.default).replace("{home}", str(home)), name
    assert not (tmp_path / "{home}").exists()


def test_home_placeholder_is_expanded_from_defaults_env_flags_and_paths(tmp_path):
    from sentimentops.steps.rollout.cli import RolloutSettings
    from sentimentops.steps.version import VersionSettings

    home = tmp_path.resolve()
    env = {"SENTIMENTOPS_HOME": str(home)}
    assert load_settings(RolloutSettings, env=env).local_dir == f"{home}/rollout/local"  # a Field default
    assert load_settings(VersionSettings, env=env).workspace == home / "dvc-workspace"  # a Path field
    assert load_settings(RolloutSettings, env={**env, "SENTIMENTOPS_ROLLOUT_LOCAL_DIR": "{home}/e"}).local_dir \
        == f"{home}/e"  # environment
    assert load_settings(RolloutSettings, {"local_dir": "{home}/f"}, env=env).local_dir == f"{home}/f"  # a flag
    assert load_settings(VersionSettings, {"workspace": Path("{home}/w")}, env=env).workspace == home / "w"
    # Built directly, without load_settings, too (tests and callers do).
    assert RolloutSettings(home=home).local_dir == f"{home}/rollout/local"
    assert VersionSettings(home=home / "h").remote == f"{home}/h/dvc-remote"


def test_hash_dir_ignores_manifest_and_logs_but_not_content(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    first = hash_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "log.txt").write_text("noise")
    assert hash_dir(tmp_path) == first
    (tmp_path / "a.txt").write_text("two")
    assert hash_dir(tmp_path) != first
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("")
    assert hash_dir(tmp_path) != first  # a new (even empty) file changes identity


def test_manifest_roundtrip(tmp_path):
    upstream = tmp_path / "up"
    upstream.mkdir()
    (upstream / "data.parquet").write_bytes(b"x")
    out = tmp_path / "out"
    write_manifest(out, "train", inputs={"dataset": upstream}, params={"epochs": 1}, metrics={"loss": 0.5},
                   refs={"mlflow_run_id": "abc"})
    manifest = read_manifest(out)
    assert manifest.inputs["dataset"] == hash_dir(upstream)
    assert json.loads((out / "manifest.json").read_text())["refs"]["mlflow_run_id"] == "abc"
    assert manifest.params["epochs"] == 1 and manifest.metrics["loss"] == 0.5  # train keeps extra keys


def test_read_manifest_says_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(DataError, match=f"{tmp_path} has no manifest.json: expected the output folder of train"):
        read_manifest(tmp_path, TrainManifest)


def test_read_manifest_is_typed_and_refuses_another_steps_output(tmp_path):
    write_manifest(tmp_path, "evaluate", params={"max_tokens": 512},
                   metrics={"test_accuracy": 0.9, "test_f1": 0.8, "test_roc_auc": 0.95},
                   refs={"mlflow_run_id": "abc", "champion_version": None})
    manifest = read_manifest(tmp_path, EvaluateManifest)
    assert isinstance(manifest, EvaluateManifest) and manifest.metrics.test_f1 == 0.8
    assert manifest.refs.champion_version is None and manifest.refs["mlflow_run_id"] == "abc"
    assert isinstance(read_manifest(tmp_path), EvaluateManifest)  # without a model: the one its step names
    with pytest.raises(DataError, match=f"{tmp_path} holds the output of step 'evaluate', expected train"):
        read_manifest(tmp_path, TrainManifest)
    (tmp_path / "manifest.json").write_text(json.dumps({"step": "evaluate", "created": "", "git_sha": "", "metrics": {},
                                                        "refs": {"mlflow_run_id": "r"}}))
    with pytest.raises(DataError, match="not a valid evaluate manifest: metrics.test_accuracy: Field required"):
        read_manifest(tmp_path, EvaluateManifest)


# Every stage's writer, as it calls write_manifest: a wrong shape fails in the writing step, before anything is
# written (a reader two steps later would otherwise find the mistake).
@pytest.mark.parametrize(("step", "sections", "message"), [
    ("version", {"refs": {"dvc_md5x": "a"}}, "refs.dvc_md5: Field required"),
    ("register", {"params": {"policy": {}}, "refs": {"registered_model": "s", "model_version": "1",
                                                     "mlflow_run_id": "r", "model_hash": "h", "champion_version": None,
                                                     "promoted": True, "extra": 1}}, "refs.extra: Extra inputs"),
    ("evaluate", {"metrics": {"test_accuracy": 0.9}, "refs": {"mlflow_run_id": "r"}}, "metrics.test_f1"),
    ("ingest", {"metrics": {"train_rows": "many"}}, "metric 'train_rows' is not a number"),
    ("nosuchstep", {}, "no manifest model for step 'nosuchstep'"),
])
def test_write_manifest_validates_against_the_stages_model(tmp_path, step, sections, message):
    with pytest.raises(ValueError, match=message) as caught:
        write_manifest(tmp_path, step, **sections)
    assert not isinstance(caught.value, DataError | ValidationError)  # a writer's bug: exit 3, not 1 or 2
    assert not (tmp_path / "manifest.json").exists()


def test_each_stage_has_its_manifest_model():
    assert {m.stage for m in STAGE_MANIFESTS} >= {"ingest", "validate", "version", "train", "evaluate", "register"}
    assert manifest_model("rollout-analyse") is RolloutManifest
