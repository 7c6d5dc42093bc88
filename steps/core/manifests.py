"""The typed manifest every step writes beside its outputs, and the content hashes that chain them.

One pydantic model per stage: a shared envelope (`Manifest`: step, created, git_sha, inputs, outputs) and the
stage's own `params`, `metrics` and `refs`. `write_manifest` validates what a stage writes against its stage's model,
so a wrong shape fails in the writing step, at the boundary, not two steps later in a reader. `read_manifest(folder,
TrainManifest)` is the one reader: a folder without a manifest, or with another step's, is a DataError naming both.

A downstream step records the content hash of each input folder, so a served prediction can be traced back to its
dataset and commit (ARCHITECTURE.md); reuse is the local runner's decision (workflows/runner), not a stage's.

Longer than 350 lines: one small model per stage boundary (seven), kept in one file so that every hand-over
between stages reads in one place; the models are declarations, not logic.
"""
from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sentimentops.steps.core.errors import DataError
from sentimentops.steps.core.provenance import (  # noqa: F401  GIT_SHA_ENV, IMAGE_ENV re-exported for older imports
    GIT_SHA_ENV,
    IMAGE_ENV,
    current_image,
    git_sha,
)

MANIFEST = "manifest.json"
RESTORE_RECORD = ".sentimentops-restore.json"  # what `sentimentops data pull` restored into a folder (not data)
# Files that never take part in a folder's identity: the manifest itself (it holds timestamps), logs, and the record
# of a restore (a restored folder hashes as the dataset it restores).
_VOLATILE = {MANIFEST, "log.txt", RESTORE_RECORD}


class Section(BaseModel):
    """A manifest's params, metrics or refs. Extra keys are forbidden unless a stage's section says otherwise.

    `get`/`[]` read a key by name (declared or extra): kept so readers written against the old dict sections
    (`manifest.refs.get("dvc_md5", "")`) keep working; new code reads attributes (`manifest.refs.dvc_md5`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def get(self, key: str, default: Any = None) -> Any:
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.model_extra or {}).get(key, default)

    def __getitem__(self, key: str) -> Any:
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in type(self).model_fields or key in (self.model_extra or {}))


class OpenSection(Section):
    """A section whose writer is still changing (or computes its keys): extra keys are kept, any JSON value."""

    model_config = ConfigDict(extra="allow")


class Metrics(Section):
    """Numbers only: extra keys are kept (a writer's per-split counts), each one a float."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float] = Field(init=False)


class NoSection(Section):
    """A section the stage does not write: empty."""


class Manifest(BaseModel):
    """The envelope every stage's manifest shares."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    # The `step` value this model describes; `step_prefix` for a family of steps (rollout-deploy, rollout-analyse).
    stage: ClassVar[str] = ""
    step_prefix: ClassVar[bool] = False

    step: str
    created: str = Field(description="UTC time the manifest was written (ISO 8601, seconds)")
    git_sha: str = Field(description="Commit of the code that wrote it (SENTIMENTOPS_GIT_SHA or git rev-parse)")
    image: str = Field("", description="The image the step ran in (ref, `@sha256:...` when the pod told it); "
                       "empty outside a container")
    inputs: dict[str, str] = Field(default_factory=dict, description="input name -> content hash of the folder")
    outputs: dict[str, str] = Field(default_factory=dict, description="output name -> path relative to the folder")
    params: Section = Field(default_factory=NoSection)
    metrics: Section = Field(default_factory=NoSection)
    refs: Section = Field(default_factory=NoSection, description="ids in other systems: MLflow run, DVC md5, ...")

    @classmethod
    def describes(cls, step: str) -> bool:
        if not cls.stage:  # the envelope alone: any step
            return True
        return step.startswith(cls.stage + "-") if cls.step_prefix else step == cls.stage


# ---------------------------------------------------------------------------------------------------- ingest
class IngestParams(Section):
    """The sampling settings (steps/ingest.py: IngestSettings)."""

    source: str
    sample_size: int
    test_size: int
    val_fraction: float
    seed: int


class IngestRefs(Section):
    source: str = Field(description="The source actually read (after an offline fallback, the fallback).")
    offline_fallback: bool
    production_store: str = Field("", description="The production store whose feedback was merged; empty: none.")


class IngestManifest(Manifest):
    """metrics: `<split>_rows` per written split (train, validation, test)."""

    stage: ClassVar[str] = "ingest"
    params: IngestParams
    metrics: Metrics = Field(default_factory=Metrics)
    refs: IngestRefs


# ---------------------------------------------------------------------------------------------------- validate
class ValidateMetrics(Metrics):
    """Row counts and expectation tallies; extra: `rows_<split>` and observed shares (`overlap_share_train_test`)."""

    rows: float
    expectations: float
    failed_expectations: float


class ValidateManifest(Manifest):
    """params: the stage's own settings (ValidateSettings.thresholds(): every non-common field), open."""

    stage: ClassVar[str] = "validate"
    params: OpenSection = Field(default_factory=OpenSection)
    metrics: ValidateMetrics
    refs: NoSection = Field(default_factory=NoSection)


# ---------------------------------------------------------------------------------------------------- version
class VersionParams(Section):
    remote: str | None = None


class VersionMetrics(Section):
    pushed_objects: float = 0.0


class VersionRefs(Section):
    """What `dvc add` + `dvc push` recorded (strings, as DVC reports them)."""

    dvc_md5: str = Field(description="md5 of the dataset snapshot (`<md5>.dir`), the dataset's lineage id")
    dvc_remote: str | None = None
    dvc_files: str | None = None
    dvc_pushed: str | None = None


class VersionManifest(Manifest):
    stage: ClassVar[str] = "version"
    params: VersionParams = Field(default_factory=VersionParams)
    metrics: VersionMetrics = Field(default_factory=VersionMetrics)
    refs: VersionRefs


# ---------------------------------------------------------------------------------------------------- train
class TrainParams(OpenSection):
    """The settings asked for and what was used; open (the trainer adds what it learns, e.g. batch_size_used)."""

    requested: dict[str, Any] | None = None
    base_model: str | None = None
    base_model_used: str | None = Field(None, description="The model actually fine-tuned (after a fallback)")
    offline_fallback: bool | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    max_length: int | None = Field(None, description="Tokens per review at training time")
    seed: int | None = None
    precision: str | None = None
    train_rows: int | None = None
    validation_rows: int | None = None


class TrainMetrics(Metrics):
    """Throughput and loss; extra numbers (mfu, ...) are kept."""

    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    train_seconds: float | None = None
    final_loss: float | None = None
    steps: float | None = None
    mfu: float | None = None


class TrainRefs(OpenSection):
    mlflow_run_id: str = Field(description="The MLflow run holding the training's params, metrics and model")
    dvc_md5: str = Field("", description="The dataset snapshot trained on (the version step's dvc_md5)")
    rank: str | None = None


class TrainManifest(Manifest):
    stage: ClassVar[str] = "train"
    params: TrainParams = Field(default_factory=TrainParams)
    metrics: TrainMetrics = Field(default_factory=TrainMetrics)
    refs: TrainRefs


# ---------------------------------------------------------------------------------------------------- evaluate
class EvaluateParams(OpenSection):
    max_tokens: int | None = Field(None, description="Tokens per review when scoring (the serving limit)")


class EvaluateMetrics(Metrics):
    """Challenger (`test_*`) and, when there is one, the champion (`champion_test_*`) on the same test rows."""

    test_accuracy: float
    test_f1: float
    test_roc_auc: float
    champion_test_accuracy: float | None = None
    champion_test_f1: float | None = None
    champion_test_roc_auc: float | None = None
    tfidf_test_accuracy: float | None = Field(None, description="The TF-IDF + logistic-regression baseline, same rows")
    behaviour_pass_rate: float | None = Field(None, description="Share of the behavioural suite's cases passed")
    test_ece: float | None = Field(None, description="Expected calibration error of the challenger")


class EvaluateRefs(OpenSection):
    mlflow_run_id: str
    champion_version: str | None = Field(None, description="The registry version scored as champion, if any")


class EvaluateManifest(Manifest):
    stage: ClassVar[str] = "evaluate"
    params: EvaluateParams = Field(default_factory=EvaluateParams)
    metrics: EvaluateMetrics
    refs: EvaluateRefs


# ---------------------------------------------------------------------------------------------------- register
class RegisterParams(Section):
    policy: dict[str, float | None] = Field(description="The promotion policy applied (register/promotion.py)")


class RegisterRefs(Section):
    registered_model: str
    model_version: str
    mlflow_run_id: str
    model_hash: str
    champion_version: str | None
    promoted: bool


class RegisterManifest(Manifest):
    stage: ClassVar[str] = "register"
    params: RegisterParams
    metrics: NoSection = Field(default_factory=NoSection)
    refs: RegisterRefs


# ---------------------------------------------------------------------------------------------------- rollout
class RolloutParams(Section):
    phase: str | None = None


class RolloutRefs(Section):
    model_version: str | None = None
    previous_version: str | None = None
    decision: str | None = None
    reason: str | None = None


class RolloutManifest(Manifest):
    """`rollout-<command>` (deploy-canary, analyse, promote, rollback: steps/rollout/cli.py)."""

    stage: ClassVar[str] = "rollout"
    step_prefix: ClassVar[bool] = True
    params: RolloutParams = Field(default_factory=RolloutParams)
    metrics: NoSection = Field(default_factory=NoSection)
    refs: RolloutRefs = Field(default_factory=RolloutRefs)


STAGE_MANIFESTS: tuple[type[Manifest], ...] = (IngestManifest, ValidateManifest, VersionManifest, TrainManifest,
                                               EvaluateManifest, RegisterManifest, RolloutManifest)
M = TypeVar("M", bound=Manifest)


def manifest_model(step: str) -> type[Manifest]:
    """The model for a step name; an unknown step is a bug in the writer (not a data error)."""
    for model in STAGE_MANIFESTS:
        if model.describes(step):
            return model
    raise ValueError(f"no manifest model for step {step!r} (known: "
                     f"{', '.join(m.stage + ('-*' if m.step_prefix else '') for m in STAGE_MANIFESTS)})")


def hash_dir(path: Path) -> str:
    """sha256 over relative paths and bytes of every file below `path` (sorted), volatile files excluded."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name in _VOLATILE or "checkpoints" in file.relative_to(path if path.is_dir() else path.parent).parts:
            continue
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def _number(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metric {key!r} is not a number: {value!r}") from err


def write_manifest(
    out_dir: Path,
    step: str,
    *,
    inputs: dict[str, Path] | None = None,
    outputs: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    refs: dict[str, Any] | None = None,
) -> Manifest:
    """Validates the step's manifest against its stage's model, then writes it atomically (the last file a step
    writes: its presence marks a complete output folder). A wrong shape raises ValueError (pydantic's
    ValidationError) in the writing step, before anything is written."""
    model = manifest_model(step)
    try:
        manifest = model.model_validate({
            "step": step,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_sha": git_sha(),
            "image": current_image(),
            "inputs": {name: hash_dir(p) for name, p in (inputs or {}).items()},
            "outputs": outputs or {},
            "params": json.loads(json.dumps(params or {}, default=str)),  # paths and enums as JSON has them
            "metrics": {k: _number(k, v) for k, v in (metrics or {}).items()},
        "refs": json.loads(json.dumps(refs or {}, default=str)),
        })
    except ValidationError as err:
        # A bug in the writing stage, not a usage error: a plain ValueError (exit 3 with its traceback), not the
        # ValidationError the exit table reads as invalid settings.
        raise ValueError(f"step {step!r} wrote a manifest that does not fit {model.__name__}: {_errors(err)}") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.model_dump(), indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(out_dir / MANIFEST)
    return manifest


@overload
def read_manifest(folder: Path) -> Manifest: ...
@overload
def read_manifest(folder: Path, model: type[M]) -> M: ...
def read_manifest(folder: Path, model: type[Manifest] | None = None) -> Manifest:
    """The manifest in `folder`, as `model` (e.g. TrainManifest); without a model, as the model its step names.

    A missing manifest, one of another step, or one that does not fit the model is a DataError naming the folder
    and the step expected: the folder given is not the output of that step."""
    path = Path(folder) / MANIFEST
    expected = (model.stage + ("-*" if model.step_prefix else "")) if model else "a pipeline step"
    if not path.is_file():
        raise DataError(f"{folder} has no {MANIFEST}: expected the output folder of {expected}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not JSON ({err}): expected the manifest of {expected}") from err
    step = raw.get("step") if isinstance(raw, dict) else None
    if not isinstance(step, str):
        raise DataError(f"{path} names no step: expected the manifest of {expected}")
    if model is not None and not model.describes(step):
        raise DataError(f"{folder} holds the output of step {step!r}, expected {expected}")
    try:
        chosen = model or manifest_model(step)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from err
    try:
        return chosen.model_validate(raw)
    except ValidationError as err:
        raise DataError(f"{path} is not a valid {chosen.stage} manifest: {_errors(err)}") from err


def _errors(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())

