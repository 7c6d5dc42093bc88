"""`sentimentops rollout ...`: roll a registered model out as a canary and promote or roll it back.

  deploy    resolve the candidate (MLflow alias `challenger` or a version) to the storage URI register recorded
            on it (tag `storage_uri`) and deploy it as a canary
  analyse   wait until it is ready, compare it with stable in Prometheus over the soak, record the decision
            (OUT/decision: promote | rollback, an Argo output parameter)
  promote   all traffic to the candidate, MLflow alias `champion` moved
  rollback  the previous revision restored, `champion` untouched
  run       all of the above
  status    the recorded rollout state
  local up|down|status   the local stand-in: stable predictor, weighted router, Prometheus on 127.0.0.1

Targets: `kserve` (the InferenceService through the Kubernetes API, in-cluster ServiceAccount; the gke profile's
default) or `local` (docs/rollout.md).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, add_settings_flags, settings_from_args
from sentimentops.steps.core.errors import DataError, UsageError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.rollout.policy import RolloutPolicy

log = get_logger(__name__)

DEFAULT_CLUSTER_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"


def seconds(text: str | float) -> float:
    """`30m`, `90s`, `1h`, `1m30s` or a number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 90s, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


class RolloutSettings(CommonSettings):
    section: ClassVar[str] = "rollout"
    target: Literal["", "kserve", "local"] = Field(
        "", description="kserve | local; empty: kserve under the gke profile, else local.")
    canary_percent: int = Field(10, ge=0, le=100, description="Share of traffic for the canary (runbook: 10).")
    mirror_percent: int = Field(0, ge=0, le=100, description="Local target: share of predict requests the router "
                                "also sends to the other deployment, to compare their labels (the agreement "
                                "check; 0: off). KServe mirrors nothing: agreement is not judged there.")
    soak: str = Field("30m", description="How long the canary must prove itself (runbook: 30 minutes).")
    interval: str = Field("1m", description="Analysis interval, also the PromQL window of each analysis.")
    ready_timeout: str = Field("10m", description="How long the canary may take to become ready.")
    prometheus_url: str = Field("", description="Prometheus HTTP API; empty: the local one, or "
                                f"{DEFAULT_CLUSTER_PROMETHEUS} for kserve.")
    version_label: str = Field("model_version", description="Label carrying the model version on every series.")
    inference_service: str = Field("sentiment", description="InferenceService name (kserve).")
    namespace: str = Field("", description="Its namespace; empty: the pod's own (in-cluster).")
    mode: Literal["auto", "serverless", "raw"] = Field(
        "auto", description="auto (from the deploymentMode annotation) | serverless | raw.")
    local_dir: str = Field("{home}/rollout/local", description="Local target: state, logs, Prometheus TSDB.")
    load_rps: float = Field(20.0, ge=0, description="Local target: requests/s replayed to the router during "
                            "the soak (0: none).")
    load_source: str = Field("../shared/data/imdb/sample_test.parquet", description="Local target: reviews "
                             "to replay (parquet/JSONL with `text`; missing: the demo reviews).")
    seed: int = Field(0, description="Router split and load order.")
    policy: RolloutPolicy = Field(default_factory=RolloutPolicy, description="The canary comparison's thresholds "
                                  "as JSON (steps/rollout/policy.py RolloutPolicy; defaults: the runbook), e.g. "
                                  "'{\"min_feedback_labels\": 100, \"require_quality\": true}'.")


def build_target(settings: RolloutSettings, canary_env: dict[str, str]):
    if settings.target == "kserve":
        from kubernetes.config import ConfigException

        from sentimentops.steps.rollout.controller import RolloutError
        from sentimentops.steps.rollout.kserve import KServeTarget, in_cluster_namespace

        if settings.mirror_percent:
            log.warning("rollout: --mirror-percent %d ignored: KServe mirrors no requests, so the agreement check "
                        "is not judged in the cluster (feedback accuracy is)", settings.mirror_percent)
        try:
            return KServeTarget(settings.inference_service, settings.namespace or in_cluster_namespace(),
                                mode=settings.mode)
        except ConfigException as err:  # run outside a pod: a message, not a traceback
            raise RolloutError(f"--target kserve needs the pod's Kubernetes ServiceAccount ({err}); on this "
                               "machine use --target local (docs/rollout.md), or run the pipeline with "
                               "-p rollout=skip") from err
    from sentimentops.steps.rollout.local import LocalTarget

    return LocalTarget(Path(settings.local_dir), settings.registered_model, canary_env=canary_env,
                       load_rps=settings.load_rps, load_source=Path(settings.load_source), seed=settings.seed,
                       mirror_percent=settings.mirror_percent)


def build_controller(settings: RolloutSettings, canary_env: dict[str, str]):
    from sentimentops.steps.rollout.analysis import Probe, Prometheus
    from sentimentops.steps.rollout.controller import Controller, Timing
    from sentimentops.steps.rollout.registry import Registry

    target = build_target(settings, canary_env)
    url = settings.prometheus_url or (DEFAULT_CLUSTER_PROMETHEUS if settings.target == "kserve" else "")
    if not url and settings.target == "local":
        url = target.prometheus_url() if target.state_file.is_file() else "http://127.0.0.1:9090"
    probe = Probe(Prometheus(url), label=settings.version_label, extra=target.matchers())
    timing = Timing(soak_s=seconds(settings.soak), interval_s=seconds(settings.interval),
                    ready_timeout_s=seconds(settings.ready_timeout))
    return Controller(target, Registry(settings), probe, settings.policy, timing, settings.canary_percent)


def write_out(out: Path | None, state, command: str) -> None:
    if out is None:
        return
    from dataclasses import asdict

    from sentimentops.steps.core.manifests import write_manifest

    out.mkdir(parents=True, exist_ok=True)
    (out / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    # An Argo output parameter (valueFrom.path): promote and rollback run on `decision == ...`.
    (out / "decision").write_text(state.decision or "pending")
    write_manifest(out, f"rollout-{command}", outputs={"state": "state.json", "decision": "decision"},
                   params={"phase": state.phase}, refs={"model_version": state.candidate_version,
                                                       "previous_version": state.previous_version,
                                                       "decision": state.decision, "reason": state.reason})


def parser() -> argparse.ArgumentParser:
    """`sentimentops rollout`: each sub-command takes the sub-command's own arguments plus one flag per
    RolloutSettings field (`sentimentops rollout run --help` lists them)."""
    p = argparse.ArgumentParser(prog="sentimentops rollout", description=__doc__,
                                epilog="Every sub-command takes the rollout settings as flags, each with its "
                                "description: sentimentops rollout <command> --help.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--canary-env", action="append", default=[], metavar="KEY=VALUE",
                        help="local target: extra environment for the canary predictor (fault injection)")
    common.add_argument("--out", type=Path, help="output folder: decision, state.json, manifest.json")
    add_settings_flags(common, RolloutSettings)
    for name in ("deploy", "run"):
        s = sub.add_parser(name, parents=[common])
        s.add_argument("--model", default="challenger", help="MLflow alias or version number (default: challenger)")
    sub.add_parser("analyse", parents=[common], aliases=["analyze"])
    sub.add_parser("promote", parents=[common])
    rb = sub.add_parser("rollback", parents=[common])
    rb.add_argument("--reason", default="manual rollback")
    sub.add_parser("status", parents=[common])
    local = sub.add_parser("local", parents=[common], help="the local stand-in")
    local.add_argument("action", choices=["up", "down", "status"])
    local.add_argument("--stable", default="champion", help="alias or version to serve as stable (up)")
    return p


def _canary_env(items: list[str]) -> dict[str, str]:
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        raise UsageError(f"--canary-env expects KEY=VALUE, got {bad[0]!r}")
    return dict(kv.split("=", 1) for kv in items)


def _registry_error(err: Exception) -> Exception:
    """An MLflow failure as the exit table sees it: no such model, alias or version is a data error (1)."""
    missing = getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
    return DataError(f"model registry: {err}") if missing else err


@stage_main("rollout")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from_args(RolloutSettings, args)
    if not settings.target:
        settings = settings.model_copy(update={"target": "kserve" if settings.profile == "gke" else "local"})
    canary_env = _canary_env(args.canary_env)
    from mlflow.exceptions import MlflowException

    from sentimentops.steps.rollout.controller import RolloutError

    try:
        if args.command == "local":
            return local_command(settings, args)
        controller = build_controller(settings, canary_env)
        if args.command == "status":
            state = controller.target.load_state()
            emit(state.to_json() if state else "no rollout recorded")
            return 0
        state = {"deploy": lambda: controller.deploy(args.model), "run": lambda: controller.run(args.model),
                 "analyse": controller.analyse, "analyze": controller.analyse, "promote": controller.promote,
                 "rollback": lambda: controller.rollback(args.reason)}[args.command]()
    except (RolloutError, ValueError) as err:  # out of order (no state, no decision), a bad duration: usage, 2
        if isinstance(err, UsageError | DataError):
            raise
        raise UsageError(str(err)) from err
    except MlflowException as err:
        raise _registry_error(err) from err
    write_out(args.out, state, args.command)
    emit(f"rollout: version {state.candidate_version}: {state.phase}"
          + (f" ({state.decision}: {state.reason})" if state.decision else ""))
    return 0


def local_command(settings: RolloutSettings, args: argparse.Namespace) -> int:
    from sentimentops.steps.rollout.local import LocalTarget
    from sentimentops.steps.rollout.registry import Registry

    target = LocalTarget(Path(settings.local_dir), settings.registered_model, seed=settings.seed)
    if args.action == "down":
        target.down()
        emit(f"rollout: local processes under {target.folder} stopped")
    elif args.action == "up":
        version, _ = Registry(settings).resolve(args.stable)
        data = target.up(version)
        emit(f"rollout: local stable version {version}: router {data['router']['url']}, "
              f"prometheus {data['prometheus']['url']}")
    else:
        emit(json.dumps(target.read(), indent=2))
    return 0
