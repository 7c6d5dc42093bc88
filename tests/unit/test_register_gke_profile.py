"""The gke profile names no installation's locations: the MLflow server, its artifact destination (which register
maps a version's storage URI onto) and the DVC remote come from the environment the chart sets from its values
(through the WorkflowTemplate parameters). A step that needs one and finds it empty stops with one line naming
the variable, never a traceback and never a silent local default."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sentimentops.steps.core.config import CommonSettings, load_settings, profile_path
from sentimentops.steps.core.errors import UsageError
from sentimentops.steps.register.cli import RegisterSettings
from sentimentops.steps.version import VersionSettings

CLI = str(Path(sys.executable).with_name("sentimentops"))
GKE = {"SENTIMENTOPS_PROFILE": "gke"}


def test_the_gke_profile_holds_no_bucket_namespace_or_project():
    text = profile_path("gke").read_text()
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # values, not the comments
    assert not re.search(r"gs://|s3://|\.svc\b|cluster\.local|sentimentops-(dvc|mlflow|argo)", body), body
    profile = yaml.safe_load(text)
    assert profile["common"]["mlflow_tracking_uri"] == "" and profile["version"]["remote"] == ""


def test_cluster_locations_come_from_the_environment():
    env = {**GKE, "SENTIMENTOPS_MLFLOW_TRACKING_URI": "http://mlflow.team-a.svc.cluster.local:5000",
           "SENTIMENTOPS_MLFLOW_ARTIFACTS_DESTINATION": "gs://team-a-mlflow/artifacts",
           "SENTIMENTOPS_VERSION_REMOTE": "gs://team-a-dvc/remote"}
    register = load_settings(RegisterSettings, env=env)
    assert register.mlflow_tracking_uri == env["SENTIMENTOPS_MLFLOW_TRACKING_URI"]
    assert register.storage_uri("mlflow-artifacts:/sentiment-training/models/m-1/artifacts") == \
        "gs://team-a-mlflow/artifacts/sentiment-training/models/m-1/artifacts"
    version = load_settings(VersionSettings, env=env)
    assert version.remote == "gs://team-a-dvc/remote"
    version.require("remote")
    register.require("mlflow_tracking_uri")


@pytest.mark.parametrize("cls, field, variable", [
    (VersionSettings, "remote", "SENTIMENTOPS_VERSION_REMOTE"),
    (CommonSettings, "mlflow_tracking_uri", "SENTIMENTOPS_MLFLOW_TRACKING_URI"),
    (RegisterSettings, "mlflow_tracking_uri", "SENTIMENTOPS_MLFLOW_TRACKING_URI"),
])
def test_an_empty_location_names_its_variable(cls, field, variable):
    settings = load_settings(cls, env={**GKE, variable: ""})  # the chart left the value empty
    with pytest.raises(UsageError, match=f"{field} not set: set {variable}"):
        settings.require(field)


def test_the_version_step_stops_in_one_line_naming_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENTOPS_")}
    env.update({**GKE, "SENTIMENTOPS_HOME": str(tmp_path / "home"), "SENTIMENTOPS_LOG_FORMAT": "text"})
    done = subprocess.run([CLI, "version", "--dataset", str(tmp_path), "--out", str(tmp_path / "out")], check=False,
                          env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "SENTIMENTOPS_VERSION_REMOTE" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_int8_path_is_open_in_the_cluster():
    """Issue 13, item 4: cluster models were once served fp32 because register globbed the local runner's folders for
    the test split. Now evaluate builds and judges the ONNX export on the test split it is handed (the template
    passes ingest's `dataset` artifact: tests/contract/test_training_workflow.py) and register ships evaluate's
    `onnx/`; in the gke profile the export is on and every test row is scored (no CPU cap)."""
    from sentimentops.steps.evaluate.cli import EvaluateSettings
    from sentimentops.steps.evaluate.onnx_export import ExportSettings

    assert load_settings(ExportSettings, env=GKE).enabled
    assert load_settings(EvaluateSettings, env=GKE).max_rows_cpu == 0
    assert load_settings(EvaluateSettings, env={"SENTIMENTOPS_PROFILE": "local"}).max_rows_cpu > 0
