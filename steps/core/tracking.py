"""MLflow access shared by the steps: one place that knows the tracking URI, the experiment and its artifact root.

Local profile: a sqlite file and a local artifact folder, no server (docs/measurements.md, MLflow 3.17).
"""
from __future__ import annotations

import os
import re
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
from sentimentops.steps.core.errors import DataError, UsageError
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
    all_tags = {GIT_SHA_TAG: git_sha(), "profile": settings.profile, **(tags or {})}
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


# A registered model's URI as the predictor and the batch scorer take it: an alias (`models:/sentiment@champion`) or
# a number (`models:/sentiment/3`).
MODEL_URI = re.compile(r"models:/([^/@]+)(?:@([\w-]+)|/(\d+))")


def registered_version(settings: CommonSettings, uri: str) -> tuple[str, str, str]:
    """`models:/NAME@ALIAS` or `models:/NAME/N` -> (name, the concrete version, its run id), looked up in the registry
    now, so an alias is pinned once. UsageError for another form; DataError for a name, alias or version the
    registry does not have; any other MLflow failure (a lost server) as it is."""
    match = MODEL_URI.fullmatch(uri or "")
    if not match:
        raise UsageError(f"unsupported model URI {uri!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = match.groups()
    from mlflow.exceptions import MlflowException

    client = configure(settings)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException as err:
        if getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise DataError(f"cannot resolve {uri}: {err}") from err
        raise
    return name, str(found.version), found.run_id or ""


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


# ------------------------------------------------------------------------------------------------ the dataset input
IMAGE_TAG_PREFIX = "image."  # a version's image.<stage> tags: register writes them, `sentimentops lineage` reads them
# Tags train puts on its run and register on the version; `sentimentops lineage` and `data pull` read them.
GIT_SHA_TAG = "git_sha"  # the commit the step ran (core.manifests.git_sha)
DATASET_MD5_TAG = "dataset.dvc_md5"  # the DVC md5 (`<md5>.dir`) of the version step's snapshot
DATASET_REMOTE_TAG = "dataset.dvc_remote"  # the DVC remote the snapshot was pushed to
DATASET_ARTIFACT_DIR = "dataset"  # the version step's `dataset.dvc` pointer, logged beside the run's model
DATASET_CONTEXT = "training"  # MLFLOW_DATASET_CONTEXT of the input (MLflow's Datasets view groups by it)


def dataset_short_name(source: str) -> str:
    """`hf:stanfordnlp/imdb` -> `imdb`, `/data/imdb/` -> `imdb`, `demo` -> `demo`: the name MLflow lists."""
    return source.rstrip("/").replace(":", "/").rsplit("/", 1)[-1] or "dataset"


def split_rows(dataset: Path) -> dict[str, int]:
    """Rows per split of a dataset folder (`<split>.parquet`), from the parquet footers (no data read)."""
    import pyarrow.parquet as pq

    return {f.stem: pq.ParquetFile(f).metadata.num_rows for f in sorted(Path(dataset).glob("*.parquet"))}


def dataset_source(remote: str):
    """MLflow's dataset source for a DVC remote: gs://... as a GCS source, a local folder as a local one. Built from
    the URI alone: nothing is read from the remote (offline, and no GCS credentials needed to log)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():  # a local path matches two registered local sources, the same class
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(remote)


def log_dataset(run_id: str, pointer_file: Path, remote: str, name: str, rows: dict[str, int]) -> bool:
    """Logs the DVC snapshot as the run's dataset input (name, digest = the DVC md5, source = the remote, a profile
    with rows per split) and its pointer as the artifact `dataset/dataset.dvc`. The md5 is the pointer's own, so
    the input, the artifact and the `dataset.dvc_md5` tag cannot disagree. Returns False when the run already
    holds this input (a resumed run logs nothing twice)."""
    import json

    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from sentimentops.steps.core.snapshots import Pointer

    pointer = Pointer.parse(pointer_file.read_text(), str(pointer_file))
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if run.inputs and any(i.dataset.digest == pointer.md5 for i in run.inputs.dataset_inputs):
        return False

    class DvcSnapshot(MetaDataset):
        """A MetaDataset with a profile (MetaDataset has none): what MLflow shows beside the digest."""

        @property
        def profile(self):
            return {"rows": rows, "num_rows": sum(rows.values()), "dvc_files": pointer.nfiles}

        def to_dict(self):
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    # MLflow's dataset digest column holds 36 characters (mlflow/store/tracking/dbmodels/models.py, SqlDataset):
    # a DVC directory md5 is 32 hex + `.dir`, exactly 36.
    schema = Schema([ColSpec("string", "text"), ColSpec("long", "label")])
    snapshot = DvcSnapshot(dataset_source(remote), name=name, digest=pointer.md5, schema=schema)
    client.log_artifact(run_id, str(pointer_file), DATASET_ARTIFACT_DIR)
    # log_inputs with the entity, not mlflow.log_input: the run is addressed by id (resumed runs included).
    client.log_inputs(run_id, datasets=[DatasetInput(snapshot._to_mlflow_entity(),
                                                     tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])])
    return True
