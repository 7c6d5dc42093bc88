"""register: log the model to MLflow as a pyfunc, register a version with its lineage tags, alias it `challenger`,
and move `champion` only when the promotion policy (sentimentops.steps.register.promotion) says so, recording why.

Idempotent: a version is found again by its content hash, so a re-run after a crash at any point completes the
same version instead of registering a second one.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, flags, load_settings
from sentimentops.steps.core.manifests import hash_dir, read_manifest, write_manifest
from sentimentops.steps.register.promotion import Decision, PolicySettings, decide
from sentimentops.steps.core.tracking import MODEL_ARTIFACT, MODEL_DIR_KEY, alias_version, configure, mlflow_run

PYFUNC_CODE = Path(__file__).parent / "pyfunc_model.py"
# Explicit requirements: MLflow would otherwise infer them (~9 s) and look for torchvision
# (docs/measurements.md, MLflow).
REQUIREMENTS = ("torch", "transformers", "tokenizers", "pandas", "mlflow")


class RegisterSettings(CommonSettings):
    section: ClassVar[str] = "register"
    policy: PolicySettings = Field(default_factory=PolicySettings)
    baseline_accuracy: float | None = Field(None, description="Shortcut for policy.baseline_accuracy.")
    champion_moves_at: Literal["register", "rollout"] = Field(
        "register", description="register: the policy moves `champion` here (local profile, no canary); rollout: "
        "a passing policy only makes the version eligible, and the canary rollout moves `champion` once the "
        "canary proved itself (gke profile).")


def pip_requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            version = metadata.version(name).split("+")[0]
            pins.append(f"{name}=={version}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def eval_set_for(model_out: Path, train) -> Path | None:
    """The test split of the dataset this model was trained on, found by content hash among the run's step
    outputs (the local runner's layout); SENTIMENTOPS_EXPORT_EVAL_SET overrides it (in the cluster)."""
    wanted = train.inputs.get("dataset")
    run_dir = model_out.resolve().parents[2] if len(model_out.resolve().parents) > 2 else None
    if not wanted or run_dir is None:
        return None
    for candidate in sorted(run_dir.glob("*/outputs/*/test.parquet")):
        if hash_dir(candidate.parent) == wanted:
            return candidate
    return None


def export_onnx(model_out: Path, train, dest: Path) -> Path | None:
    """ONNX export + int8 with its accuracy check (sentimentops.steps.register.onnx_export) into `dest` (a scratch folder: the train
    step's output must keep its hash, or the runner would stop reusing it)."""
    from sentimentops.steps.register.onnx_export import ExportSettings, export_and_check

    settings = load_settings(ExportSettings)
    if not settings.enabled:
        return None
    eval_set = settings.eval_set or eval_set_for(model_out, train)
    report = export_and_check(model_out / "model", dest / "onnx", settings, eval_set=eval_set)
    print(f"register: ONNX {report.backend}: accuracy fp32 {report.accuracy_fp32} int8 {report.accuracy_int8} "
          f"(drop {report.drop_points} points, bound {report.max_drop_points}) on {report.eval_rows} rows "
          f"of {report.eval_set or 'no evaluation set'}", flush=True)
    return dest / "onnx"


def find_version(client, name: str, model_hash: str):
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("model_hash") == model_hash:
            return client.get_model_version(name, version.version)  # aliases are empty in search results on sqlite
    return None


def register(model_out: Path, evaluation: Path, version_out: Path, settings: RegisterSettings) -> dict:
    client = configure(settings)
    name = settings.registered_model
    train = read_manifest(model_out)
    run_id = train.refs["mlflow_run_id"]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    challenger, champion = metrics["challenger"], metrics["champion"]
    model_hash = hash_dir(model_out / "model")
    existing = find_version(client, name, model_hash)
    if existing is None:
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                                   outputs=Schema([ColSpec("string", "label"), ColSpec("double", "probability")]))
        artifacts = {MODEL_DIR_KEY: str(model_out / "model")}
        if (evaluation / "drift_reference.json").is_file():  # the drift monitor's reference travels with the model
            artifacts["drift_reference"] = str(evaluation / "drift_reference.json")
        with tempfile.TemporaryDirectory(prefix="register-onnx-") as scratch:
            onnx_dir = export_onnx(model_out, train, Path(scratch))  # the CPU serving fast path travels along
            if onnx_dir is not None:
                artifacts["onnx"] = str(onnx_dir)
            with mlflow_run(settings, run_id=run_id):
                info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=str(PYFUNC_CODE),
                                               artifacts=artifacts,
                                               pip_requirements=pip_requirements(), signature=signature)
        tags = {"model_hash": model_hash, "mlflow_run_id": run_id, "git_sha": train.git_sha,
                "dataset.dvc_md5": read_manifest(version_out).refs.get("dvc_md5", ""),
                "base_model": str(train.params.get("base_model_used", "")),
                "run.reason": settings.run_reason, "workflow": settings.workflow_name,
                **{f"test_{k}": f"{challenger[k]:.6f}" for k in ("accuracy", "f1", "roc_auc")}}
        # Tags go in with the version in one call: a crash can never leave an untagged (half-registered) version.
        created = mlflow.register_model(info.model_uri, name, tags=tags)
        existing = client.get_model_version(name, created.version)
        print(f"register: {name} version {existing.version} from run {run_id}", flush=True)
    else:
        print(f"register: {name} version {existing.version} already holds this model (hash {model_hash[:19]}...)")
    version = existing.version
    client.set_registered_model_alias(name, "challenger", version)
    current = alias_version(settings, "champion")
    policy = settings.policy.model_copy(update={"baseline_accuracy": settings.baseline_accuracy}
                                        if settings.baseline_accuracy is not None else {})
    decision = decide(challenger, champion, policy,
                      challenger_is_champion=current is not None and current.version == version)
    client.set_model_version_tag(name, version, "promotion.decision", "promote" if decision.promote else "keep")
    client.set_model_version_tag(name, version, "promotion.reasons", decision.summary())
    if decision.promote and settings.champion_moves_at == "register":
        client.set_registered_model_alias(name, "champion", version)
    print(f"register: {decision.summary()}", flush=True)
    champion_now = alias_version(settings, "champion")
    return {"version": str(version), "run_id": run_id, "decision": decision, "model_hash": model_hash,
            "champion_version": str(champion_now.version) if champion_now else None,
            "policy": policy.model_dump()}


def write_outputs(out: Path, result: dict, decision: Decision) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"version": result["version"], "champion_version": result["champion_version"],
              "decision": asdict(decision), "policy": result["policy"]}
    (out / "decision.json").write_text(json.dumps(record, indent=2) + "\n")
    # An Argo output parameter (valueFrom.path): the rollout is chained on `promoted == true`.
    (out / "promoted").write_text("true" if decision.promote else "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentimentops register", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the train step's output folder")
    parser.add_argument("--evaluation", type=Path, required=True)
    parser.add_argument("--version", type=Path, required=True)
    parser.add_argument("--baseline-accuracy", type=float)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = load_settings(RegisterSettings, flags(args, "baseline_accuracy"))
    try:
        result = register(args.model, args.evaluation, args.version, settings)
    except (FileNotFoundError, KeyError) as err:
        print(f"register: missing input: {err}", file=sys.stderr)
        return 2
    write_outputs(args.out, result, result["decision"])
    write_manifest(args.out, "register",
                   inputs={"model": args.model, "evaluation": args.evaluation, "version": args.version},
                   outputs={"decision": "decision.json", "promoted": "promoted"},
                   params={"policy": result["policy"]},
                   refs={"registered_model": settings.registered_model, "model_version": result["version"],
                         "mlflow_run_id": result["run_id"], "model_hash": result["model_hash"],
                         "champion_version": result["champion_version"],
                         "promoted": result["decision"].promote})
    return 0
