"""The lineage of a registered model version, gathered from the registry into one typed record.

What a served prediction traces back to (ARCHITECTURE.md): the answer names the model version; the version names its
MLflow run (and carries the `git_sha`, `dataset.*` and `image.<stage>` tags register put there); the run holds the
metrics and the dataset input (DVC md5 as its digest, the remote as its source, rows per split in its profile).

Pure apart from the reads through the client handed in: `Lineage` in, text or JSON out (`render_text`, `as_json`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sentimentops.steps.core.contract import EVIDENCE_TAGS, METRIC_TAGS
from sentimentops.steps.core.errors import DataError, UsageError
from sentimentops.steps.core.snapshots import POINTER
from sentimentops.steps.core.tracking import (
    DATASET_ARTIFACT_DIR,
    DATASET_CONTEXT,
    DATASET_MD5_TAG,
    DATASET_REMOTE_TAG,
    GIT_SHA_TAG,
    IMAGE_TAG_PREFIX,
)

# The run's metrics shown: the ones register tags a version with, then train's own (steps/train/cli.py logs them).
HEADLINE_METRICS = (*(f"test_{m}" for m in METRIC_TAGS), *EVIDENCE_TAGS, "val_accuracy", "train_seconds",
                    "samples_per_s")
# MLflow's error codes (mlflow.protos.databricks_pb2) for "no such version / alias / run"; anything else (an
# unreachable server, a permission error) is not an answer about what exists, and is raised as it is.
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _not_found(err: Exception) -> bool:
    return getattr(err, "error_code", None) in NOT_FOUND_CODES


@dataclass(frozen=True)
class DatasetLineage:
    name: str = ""
    md5: str = ""                 # the DVC md5 (`<md5>.dir`): the dataset's lineage id
    remote: str = ""              # the DVC remote it was pushed to
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows
    pointer: str = ""             # the run artifact holding the `.dvc` pointer (`sentimentops data pull` reads it)


@dataclass(frozen=True)
class Lineage:
    registered_model: str
    version: str
    aliases: list[str]
    run_id: str
    run_status: str
    metrics: dict[str, float]
    dataset: DatasetLineage
    git_sha: str
    images: dict[str, str]        # stage -> image (ref@digest when recorded)
    storage_uri: str = ""
    description: str = ""


def response_version(text: str) -> tuple[str | None, str]:
    """(model_name, model_version) from a predictor's JSON answer: V2 (`model_version` at the top), V1
    (`predictions[].model_version`) or :explain (`explanations[]`). Several versions in one answer is refused."""
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"the response is not JSON: {err}") from err
    items = [answer] if isinstance(answer, dict) and "model_version" in answer else [
        item for key in ("predictions", "explanations") for item in (answer.get(key) or [] if isinstance(
            answer, dict) else []) if isinstance(item, dict)]
    found = {(str(i.get("model_name")) if i.get("model_name") else None, str(i["model_version"]))
             for i in items if i.get("model_version") not in (None, "")}
    if not found:
        raise UsageError("the response names no model_version (expected a predictor's V1, V2 or :explain answer)")
    if len({v for _, v in found}) > 1:
        raise UsageError(f"the response names several model versions: {sorted(v for _, v in found)}")
    return next(iter(found))


def find_version(client: Any, name: str, *, version: str | None = None, alias: str | None = None) -> Any:
    """The registry's model version by number or alias; an unknown one is a UsageError naming what exists."""
    from mlflow.exceptions import MlflowException

    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if not _not_found(err):
            raise
        known = sorted((str(v.version) for v in _versions(client, name)), key=lambda v: (len(v), v))
        asked = f"alias {alias!r}" if alias else f"version {version}"
        raise UsageError(f"registered model {name!r} has no {asked} (versions: {', '.join(known) or 'none'})"
                         ) from err


def _versions(client: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException as err:
        if not _not_found(err):
            raise
        return []


def dataset_of(run: Any, tags: dict[str, str]) -> DatasetLineage:
    """The run's training dataset input (train logs it: core.tracking.log_dataset); the version's tags fill in
    what an older run without an input still states (md5, remote)."""
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [i for i in run.inputs.dataset_inputs
              if any(t.key == MLFLOW_DATASET_CONTEXT and t.value == DATASET_CONTEXT for t in i.tags)]
    md5, remote = tags.get(DATASET_MD5_TAG, ""), tags.get(DATASET_REMOTE_TAG, "")
    chosen = next((i.dataset for i in inputs if not md5 or i.dataset.digest == md5), None)
    if chosen is None:
        return DatasetLineage(md5=md5, remote=remote)
    profile = json.loads(chosen.profile) if chosen.profile else {}
    source = json.loads(chosen.source) if chosen.source else {}
    return DatasetLineage(name=chosen.name, md5=chosen.digest, remote=str(source.get("uri") or remote),
                          rows={k: int(v) for k, v in (profile.get("rows") or {}).items()},
                          pointer=f"{DATASET_ARTIFACT_DIR}/{POINTER}")


def gather(client: Any, model_version: Any) -> Lineage:
    """The lineage of one registry version (as `find_version` returns it)."""
    from mlflow.exceptions import MlflowException

    tags = dict(model_version.tags or {})
    try:
        run = client.get_run(model_version.run_id)
    except MlflowException as err:
        if not _not_found(err):
            raise
        raise DataError(f"version {model_version.version} names run {model_version.run_id}, which MLflow does not "
                        f"hold: {err}") from err
    metrics = {k: float(run.data.metrics[k]) for k in HEADLINE_METRICS if k in run.data.metrics}
    images = {k.removeprefix(IMAGE_TAG_PREFIX): v for k, v in sorted(tags.items()) if k.startswith(IMAGE_TAG_PREFIX)}
    return Lineage(registered_model=model_version.name, version=str(model_version.version),
                   aliases=sorted(model_version.aliases or []), run_id=model_version.run_id,
                   run_status=run.info.status, metrics=metrics, dataset=dataset_of(run, tags),
                   git_sha=tags.get(GIT_SHA_TAG) or run.data.tags.get(GIT_SHA_TAG, ""), images=images,
                   storage_uri=tags.get("storage_uri", ""), description=model_version.description or "")


def as_json(lineage: Lineage) -> str:
    return json.dumps(asdict(lineage), indent=2, sort_keys=True)


def render_text(lineage: Lineage) -> str:
    """The human form: one fact a line, the ids in full (to copy into the next command)."""
    d = lineage.dataset
    rows = ", ".join(f"{split} {n:,}" for split, n in d.rows.items()) or "not recorded"
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in lineage.metrics.items()) or "none"
    aliases = f" (@{', @'.join(lineage.aliases)})" if lineage.aliases else ""
    lines = [f"model     {lineage.registered_model} v{lineage.version}{aliases}",
             f"run       {lineage.run_id} ({lineage.run_status})",
             f"metrics   {metrics}",
             f"dataset   {d.name or 'unnamed'} md5 {d.md5 or 'not recorded'}",
             f"remote    {d.remote or 'not recorded'}",
             f"rows      {rows}",
             f"git       {lineage.git_sha or 'not recorded'}"]
    lines += [f"image     {stage}: {image}" for stage, image in lineage.images.items()] or [
        "images    none recorded (a local run: no containers)"]
    if lineage.storage_uri:
        lines.append(f"storage   {lineage.storage_uri}")
    return "\n".join(lines)
