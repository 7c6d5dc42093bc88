"""Settings precedence (flags > env > profile) and the manifest chain's hashing and reuse."""
from __future__ import annotations

import json

import pytest

from steps.config import CommonSettings, load_settings
from steps.ingest import IngestSettings
from steps.manifest import hash_dir, read_manifest, reusable, write_manifest
from steps.train import TrainSettings


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
    assert settings.mlflow_tracking_uri.startswith("http://")


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile 'nope'.*known profiles: gke, local"):
        load_settings(CommonSettings, env={"SENTIMENTOPS_PROFILE": "nope"})


def test_invalid_value_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        load_settings(TrainSettings, {"epochs": 0}, env={"SENTIMENTOPS_HOME": str(tmp_path)})


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


def test_manifest_roundtrip_and_reuse(tmp_path):
    upstream = tmp_path / "up"
    upstream.mkdir()
    (upstream / "data.parquet").write_bytes(b"x")
    out = tmp_path / "out"
    write_manifest(out, "train", inputs={"dataset": upstream}, params={"epochs": 1}, metrics={"loss": 0.5},
                   refs={"mlflow_run_id": "abc"})
    manifest = read_manifest(out)
    assert manifest.inputs["dataset"] == hash_dir(upstream)
    assert json.loads((out / "manifest.json").read_text())["refs"]["mlflow_run_id"] == "abc"
    assert reusable(out, "train", {"dataset": upstream}, {"epochs": 1}) is not None
    assert reusable(out, "train", {"dataset": upstream}, {"epochs": 2}) is None
    assert reusable(out, "evaluate", {"dataset": upstream}, {"epochs": 1}) is None
    (upstream / "data.parquet").write_bytes(b"y")
    assert reusable(out, "train", {"dataset": upstream}, {"epochs": 1}) is None


def test_read_manifest_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_manifest(tmp_path)
