"""MLflow access shared by the steps: one place that knows the tracking URI, the experiment and its artifact root.

Local profile: a sqlite file and a local artifact folder, no server (docs/measurements.md, MLflow 3.17).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sentimentops.steps.core.config import CommonSettings
from sentimentops.steps.core.contract import (
    MODEL_ARTIFACT,  # noqa: F401  re-exported: steps/register/cli.py still imports it from here
    MODEL_DIR_KEY,  # noqa: F401  re-exported, likewise
    ModelFolder,
    read_model_folder,
)
from sentimentops.steps.core.manifests import git_sha

RUN_ID_FILE = ".mlflow_run_id"  # lets a resumed step continue its own MLflow run instead of starting another


def configure(settings: CommonSettings):
    """Points MLflow at the profile's tracking/registry URI; returns an MlflowClient. An empty URI (the gke profile
    leaves it to the environment the chart sets) stops here with the variable's name, not in MLflow's defaults."""
    settings.require("mlflow_tracking_uri")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: CommonSettings) -> str:
    client = configure(settings)
    found = client.get_experiment_by_name(settings.experiment)
    if found is not None:
        return found.experiment_id
    root = settings.mlflow_artifact_root
    if "://" not in root and not root.startswith("mlflow-artifacts:"):
        Path(root).mkdir(parents=True, exist_ok=True)
        root = Path(root).resolve().as_uri()
    return client.create_experiment(settings.experiment, artifact_location=f"{root}/{settings.experiment}")


@contextmanager
def mlflow_run(
    settings: CommonSettings,
    out: Path | None = None,
    *,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator:
    """Starts (or, given run_id or a RUN_ID_FILE in `out`, resumes) an MLflow run; ends it FAILED on error."""
    import mlflow

    exp = experiment_id(settings)
    marker = out / RUN_ID_FILE if out is not None else None
    if run_id is None and marker is not None and marker.is_file():
        run_id = marker.read_text().strip()
    all_tags = {"git_sha": git_sha(), "profile": settings.profile, **(tags or {})}
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp, run_name=run_name,
                          tags=None if run_id else all_tags) as run:
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(run.info.run_id)
        yield run


def alias_version(settings: CommonSettings, alias: str):
    """The registered model version behind `alias`, or None when the model or alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    client = configure(settings)
    try:
        return client.get_model_version_by_alias(settings.registered_model, alias)
    except MlflowException:
        return None


def download_model(settings: CommonSettings, uri: str, dest: Path) -> ModelFolder:
    """Downloads a registered pyfunc (`models:/name@alias`, `models:/name/3`) and reads it (core.contract)."""
    import mlflow

    configure(settings)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    folder = read_model_folder(local)
    if not (folder.model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{uri}: no Hugging Face model folder at {folder.model_dir}")
    return folder


def download_model_dir(settings: CommonSettings, uri: str, dest: Path) -> Path:
    """Downloads a registered pyfunc and returns its Hugging Face folder (weights + tokenizer)."""
    return download_model(settings, uri, dest).model_dir
