"""register: log the model to MLflow as a pyfunc, register a version with its lineage tags, alias it `challenger`,
and move `champion` only when the promotion policy (sentimentops.steps.register.promotion) says so, recording why.

Inputs are explicit folders: the train, evaluate and version steps' outputs and the dataset the model was trained
on (checked by content hash; its manifest feeds the model card). The ONNX export that travels with the model is the
one evaluate built, scored and chose (int8 or fp32, on a paired comparison). Every input is read and checked before
anything is logged: a bad input fails the step (exit 1) with nothing registered. Each version carries a generated
model card (steps/register/card.py) and a one-line description of its lineage.

Idempotent: a version is found again by its content hash, so a re-run after a crash at any point completes the
same version instead of registering a second one.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from sentimentops.steps.core.config import STORAGE_URI_TAG, CommonSettings, parse_settings
from sentimentops.steps.core.contract import (
    DRIFT_REFERENCE_FILE,
    DRIFT_REFERENCE_KEY,
    EVIDENCE_TAGS,
    METRIC_TAGS,
    MODEL_ARTIFACT,
    MODEL_DIR_KEY,
    ONNX_DIR,
    ONNX_KEY,
    ONNX_MODEL_FILE,
)
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.core.manifests import (
    EvaluateManifest,
    IngestManifest,
    TrainManifest,
    VersionManifest,
    current_image,
    hash_dir,
    read_manifest,
    write_manifest,
)
from sentimentops.steps.core.tracking import (
    DATASET_MD5_TAG,
    DATASET_REMOTE_TAG,
    GIT_SHA_TAG,
    IMAGE_TAG_PREFIX,
    alias_version,
    configure,
    mlflow_run,
)
from sentimentops.steps.register.promotion import (
    PRODUCTION_ACCURACY_KEY,
    PRODUCTION_ROWS_KEY,
    Decision,
    EvalMetrics,
    PolicySettings,
    decide,
)

log = get_logger("sentimentops.register")
PYFUNC_CODE = Path(__file__).parent / "pyfunc_model.py"
# Explicit requirements: MLflow would otherwise infer them (~9 s) and look for torchvision
# (docs/measurements.md, MLflow).
REQUIREMENTS = ("torch", "transformers", "tokenizers", "pandas", "mlflow")
CARD_DIR, CARD_FILE = "model_card", "README.md"
TEST_SPLIT = "test.parquet"  # the ingest step's held-out split (steps/ingest.py writes <split>.parquet)
# Two reviews as the pyfunc's input_example: MLflow stores them with the model and checks them against the signature
# by running predict once at log time (offline: the pyfunc loads the saved folder, no download).
# The production slice's numbers a version carries beside METRIC_TAGS / EVIDENCE_TAGS when evaluate measured them
# (the challenger on ingest's held-out recent feedback; steps/evaluate/cli.py production_summary).
PRODUCTION_TAGS = (PRODUCTION_ACCURACY_KEY, "production_f1", PRODUCTION_ROWS_KEY, "champion_production_accuracy")
INPUT_EXAMPLE = {"text": ["A warm, funny film with a great cast.", "Dull, predictable and far too long."]}


class RegisterSettings(CommonSettings):
    section: ClassVar[str] = "register"
    policy: PolicySettings = Field(
        default_factory=PolicySettings,
        description="The promotion policy as JSON: baseline_accuracy, min_gain_over_baseline, "
        "min_gain_over_champion, max_f1_drop.")
    baseline_accuracy: float | None = Field(None, description="Shortcut for policy.baseline_accuracy.")
    champion_moves_at: Literal["register", "rollout"] = Field(
        "register", description="register: the policy moves `champion` here (local profile, no canary); rollout: "
        "a passing policy only makes the version eligible, and the canary rollout moves `champion` once the "
        "canary proved itself (gke profile).")

    def effective_policy(self) -> PolicySettings:
        if self.baseline_accuracy is None:
            return self.policy
        return self.policy.model_copy(update={"baseline_accuracy": self.baseline_accuracy})


@dataclass(frozen=True)
class Inputs:
    """The step's inputs, read and checked before anything is logged or registered."""

    model_dir: Path
    train: TrainManifest
    evaluation_dir: Path
    evaluation: EvaluateManifest
    version: VersionManifest
    ingest: IngestManifest | None  # the dataset folder's manifest: source, rows per split (the model card)

    def images(self) -> dict[str, str]:
        """stage -> the image each input's stage ran in, then this step's own (empty ones left out: local runs)."""
        manifests = (self.ingest, self.version, self.train, self.evaluation)
        found = {m.step: m.image for m in manifests if m is not None and m.image}
        if own := current_image():
            found["register"] = own
        return found


@dataclass(frozen=True)
class Registered:
    version: str
    run_id: str
    model_hash: str
    decision: Decision
    champion_version: str | None
    policy: PolicySettings


def pip_requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            version = metadata.version(name).split("+")[0]
            pins.append(f"{name}=={version}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def checked_dataset(dataset: Path | None, train: TrainManifest) -> IngestManifest | None:
    """The dataset folder's ingest manifest, after checking it is the dataset the model was trained on (the content
    hash train recorded): a card that named another dataset would break the lineage it is there to state."""
    if dataset is None:
        return None
    if not (Path(dataset) / TEST_SPLIT).is_file():
        raise DataError(f"{dataset} has no {TEST_SPLIT}: expected the ingest step's output folder (--dataset)")
    wanted = train.inputs.get("dataset")
    if wanted and (found := hash_dir(dataset)) != wanted:
        raise DataError(f"{dataset} is not the dataset the model was trained on (content {found[:19]}..., the "
                        f"train step recorded {wanted[:19]}...)")
    return read_manifest(dataset, IngestManifest)


def read_inputs(model_out: Path, evaluation: Path, version_out: Path, dataset: Path | None) -> Inputs:
    train = read_manifest(model_out, TrainManifest)
    if not (model_out / "model").is_dir():
        raise DataError(f"{model_out} has no model/ folder: the train step's output is incomplete")
    return Inputs(model_dir=model_out / "model", train=train, evaluation_dir=evaluation,
                  evaluation=read_manifest(evaluation, EvaluateManifest),
                  version=read_manifest(version_out, VersionManifest), ingest=checked_dataset(dataset, train))


def find_version(client: Any, name: str, model_hash: str) -> Any:
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("model_hash") == model_hash:
            return client.get_model_version(name, version.version)  # aliases are empty in search results on sqlite
    return None


def challenger_metrics(evaluation: EvaluateManifest) -> EvalMetrics:
    """The challenger's `test_*` metrics and the evidence the policy can gate on (TF-IDF baseline, behaviour)."""
    return EvalMetrics.from_mapping(evaluation.metrics.model_dump(), prefix="test_")


def champion_metrics(evaluation: EvaluateManifest, champion: Any) -> EvalMetrics | None:
    """The current champion's metrics: evaluate's, measured on the same test rows, when evaluate scored this very
    version; else (no comparison made, or champion moved since) the version's own `test_*` tags from MLflow."""
    if champion is None:
        return None
    m = evaluation.metrics
    if evaluation.refs.champion_version == str(champion.version) and m.champion_test_accuracy is not None:
        nan = math.nan
        production = m.get("champion_production_accuracy")
        return EvalMetrics(accuracy=m.champion_test_accuracy, f1=nan if m.champion_test_f1 is None else
                           m.champion_test_f1, roc_auc=nan if m.champion_test_roc_auc is None else m.champion_test_roc_auc,
                           production_accuracy=nan if production is None else production,
                           production_rows=m.get(PRODUCTION_ROWS_KEY, nan))
    log.warning("champion is version %s, evaluate scored %s: comparing with the champion's registry metrics "
                "(measured on its own test rows; its production slice was another, so it is left out)",
                champion.version, evaluation.refs.champion_version or "none")
    tags = EvalMetrics.from_mapping(champion.tags or {}, prefix="test_")
    return EvalMetrics(accuracy=tags.accuracy, f1=tags.f1, roc_auc=tags.roc_auc)


def register_version(client: Any, inputs: Inputs, settings: RegisterSettings, model_hash: str) -> Any:
    """Logs the pyfunc to the training run and registers it with its lineage tags in one call."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    name, run_id, challenger = settings.registered_model, inputs.train.refs.mlflow_run_id, inputs.evaluation.metrics
    signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                               outputs=Schema([ColSpec("string", "label"), ColSpec("double", "probability")]))
    artifacts = {MODEL_DIR_KEY: str(inputs.model_dir)}
    reference = inputs.evaluation_dir / DRIFT_REFERENCE_FILE
    if reference.is_file():  # the drift monitor's reference travels with the model
        artifacts[DRIFT_REFERENCE_KEY] = str(reference)
    onnx_dir = inputs.evaluation_dir / ONNX_DIR
    if (onnx_dir / ONNX_MODEL_FILE).is_file():  # the CPU serving fast path evaluate built and chose travels along
        artifacts[ONNX_KEY] = str(onnx_dir)
    with mlflow_run(settings, run_id=run_id):
        info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=str(PYFUNC_CODE), artifacts=artifacts,
                                       pip_requirements=pip_requirements(), signature=signature,
                                       input_example=pd.DataFrame(INPUT_EXAMPLE))
    tags = {"model_hash": model_hash, "mlflow_run_id": run_id, GIT_SHA_TAG: inputs.train.git_sha,
            DATASET_MD5_TAG: inputs.version.refs.dvc_md5, DATASET_REMOTE_TAG: inputs.version.refs.dvc_remote or "",
            **{f"{IMAGE_TAG_PREFIX}{stage}": image for stage, image in inputs.images().items()},
            "base_model": str(inputs.train.params.base_model_used or ""),
            "run.reason": settings.run_reason, "workflow": settings.workflow_name,
            **{f"test_{k}": f"{challenger[f'test_{k}']:.6f}" for k in METRIC_TAGS},
            **{k: f"{challenger[k]:.6f}" for k in EVIDENCE_TAGS if challenger[k] is not None},
            **{k: f"{challenger[k]:.6f}" for k in PRODUCTION_TAGS if challenger.get(k) is not None}}
    # Tags go in with the version in one call: a crash can never leave an untagged (half-registered) version.
    created = mlflow.register_model(info.model_uri, name, tags=tags)
    log.info("%s version %s from run %s", name, created.version, run_id)
    return client.get_model_version(name, created.version)


def record_storage_uri(client: Any, settings: RegisterSettings, version: str) -> str:
    """The version's `storage_uri` tag: where KServe's storage initializer reads this model (the version's download
    URI, mapped onto the MLflow server's --artifacts-destination when `mlflow_artifacts_destination` is set:
    CommonSettings.storage_uri). The rollout patches predictor.model.storageUri with it. Set on every run, so a
    re-run completes a version registered before the tag existed or one a crash left without it."""
    name = settings.registered_model
    uri = settings.storage_uri(client.get_model_version_download_uri(name, version))
    if client.get_model_version(name, version).tags.get(STORAGE_URI_TAG) != uri:
        client.set_model_version_tag(name, version, STORAGE_URI_TAG, uri)
    log.info("%s version %s: storage URI %s", name, version, uri)
    return uri


def attach_card(client: Any, inputs: Inputs, settings: RegisterSettings, version: str) -> None:
    """The version's model card (steps/register/card.py), generated from the stage outputs: logged to the training
    run as `model_card/README.md` (the MLflow UI shows it under the run's artifacts), its path in the version's
    `model_card` tag, and its one-line summary as the version's description. Re-running rewrites the same files."""
    import mlflow

    from sentimentops.steps.register.card import CardInputs, description_line, render_model_card

    metrics_file = inputs.evaluation_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    created = datetime.fromtimestamp(client.get_model_version(settings.registered_model, version).creation_timestamp
                                     / 1000, tz=UTC).isoformat(timespec="seconds")
    card = CardInputs.from_stage_outputs(
        train=inputs.train, evaluation=inputs.evaluation, dataset_version=inputs.version, metrics=metrics,
        registered_model=settings.registered_model, version=version, workflow=settings.workflow_name,
        created=created, ingest=inputs.ingest, run_reason=settings.run_reason, images=inputs.images())
    run_id = inputs.train.refs.mlflow_run_id
    with tempfile.TemporaryDirectory(prefix="model-card-") as tmp:
        path = Path(tmp) / CARD_FILE
        path.write_text(render_model_card(card))
        with mlflow_run(settings, run_id=run_id):
            mlflow.log_artifact(str(path), CARD_DIR)
    line = description_line(card)
    client.update_model_version(settings.registered_model, version,
                                description=f"{line}\n\nModel card: run {run_id}, artifact {CARD_DIR}/{CARD_FILE}")
    client.set_model_version_tag(settings.registered_model, version, "model_card", f"runs:/{run_id}/{CARD_DIR}/"
                                 f"{CARD_FILE}")


def register(model_out: Path, evaluation: Path, version_out: Path, settings: RegisterSettings,
             dataset: Path | None = None) -> Registered:
    inputs = read_inputs(model_out, evaluation, version_out, dataset)  # every input checked before MLflow
    client = configure(settings)
    name = settings.registered_model
    model_hash = hash_dir(inputs.model_dir)
    existing = find_version(client, name, model_hash)
    if existing is None:
        existing = register_version(client, inputs, settings, model_hash)
    else:
        log.info("%s version %s already holds this model (hash %s...)", name, existing.version, model_hash[:19])
    version = str(existing.version)
    record_storage_uri(client, settings, version)
    attach_card(client, inputs, settings, version)
    client.set_registered_model_alias(name, "challenger", version)
    current = alias_version(settings, "champion")
    policy = settings.effective_policy()
    is_champion = current is not None and str(current.version) == version  # a re-run after the alias moved
    champion = None if is_champion else champion_metrics(inputs.evaluation, current)
    decision = decide(challenger_metrics(inputs.evaluation), champion, policy, challenger_is_champion=is_champion)
    client.set_model_version_tag(name, version, "promotion.decision", "promote" if decision.promote else "keep")
    client.set_model_version_tag(name, version, "promotion.reasons", decision.summary())
    if decision.promote and settings.champion_moves_at == "register":
        client.set_registered_model_alias(name, "champion", version)
    log.info("%s", decision.summary())
    champion_now = alias_version(settings, "champion")
    return Registered(version=version, run_id=inputs.train.refs.mlflow_run_id, model_hash=model_hash,
                      decision=decision, champion_version=str(champion_now.version) if champion_now else None,
                      policy=policy)


def decision_record(result: Registered) -> dict[str, Any]:
    return {"version": result.version, "champion_version": result.champion_version,
            "decision": asdict(result.decision), "policy": result.policy.model_dump()}


def write_outputs(out: Path, result: Registered) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "decision.json").write_text(json.dumps(decision_record(result), indent=2) + "\n")
    # An Argo output parameter (valueFrom.path): the rollout is chained on `promoted == true`.
    (out / "promoted").write_text("true" if result.decision.promote else "false")


def add_folders(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="The train step's output folder.")
    parser.add_argument("--evaluation", type=Path, required=True, help="The evaluate step's output folder.")
    parser.add_argument("--version", type=Path, required=True, help="The version step's output folder.")
    parser.add_argument("--dataset", type=Path, required=True,
                        help="The ingest step's output folder, the dataset the model was trained on (checked "
                        "by content hash): its manifest gives the model card's data section.")
    parser.add_argument("--out", type=Path, required=True, help="Output folder (decision.json, promoted).")


@stage_main("register")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(RegisterSettings, argv, prog="sentimentops register",
                                    description=__doc__, add_arguments=add_folders)
    result = register(args.model, args.evaluation, args.version, settings, dataset=args.dataset)
    write_outputs(args.out, result)
    # The manifest is written last: its presence marks a complete output folder.
    write_manifest(args.out, "register",
                   inputs={"model": args.model, "evaluation": args.evaluation, "version": args.version,
                           "dataset": args.dataset},
                   outputs={"decision": "decision.json", "promoted": "promoted"},
                   params={"policy": result.policy.model_dump()},
                   refs={"registered_model": settings.registered_model, "model_version": result.version,
                         "mlflow_run_id": result.run_id, "model_hash": result.model_hash,
                         "champion_version": result.champion_version, "promoted": result.decision.promote})
    emit(json.dumps(decision_record(result)))
    return 0
