"""The KServe target: pure merge-patch builders for both deployment modes, and the InferenceService through the
official Kubernetes client (in-cluster ServiceAccount; RBAC: get + patch on this InferenceService, create events).

Serverless (Knative revisions): the canary is a new revision of `spec.predictor`; `canaryTrafficPercent: P` sends
P% to it and the rest to the previously rolled-out revision. Promote removes the field (the latest revision takes
100%); roll back restores the previous predictor spec with `canaryTrafficPercent: 0`, so traffic stays on the
previously rolled-out revision (KServe's documented rollback) and the spec again describes the stable model.
RawDeployment (KServe 0.20+, `spec.canary: [{trafficPercent, predictor}]`): the canary predictor runs beside the
untouched `spec.predictor`. Promote moves the canary predictor into `spec.predictor` and clears `spec.canary`;
roll back clears `spec.canary`.

Every patch carries the rollout annotations (sentimentops.steps.rollout.state) in the same request, so the object and the
record of what was done to it can never disagree.
"""
from __future__ import annotations

import copy
import json
import uuid
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Literal

from sentimentops.steps.rollout.state import RolloutState, now_iso

Mode = Literal["serverless", "raw"]
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
VERSION_LABEL = "sentimentops.io/model-version"  # relabelled to `model_version` by the ServiceMonitor
# Relabelled to `role` (stable/canary): the canary recording rules in charts/sentimentops/files/monitoring/rules compare by it.
ROLE_LABEL = "sentimentops.io/role"
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
CONTAINER = "kserve-container"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def deployment_mode(isvc: dict) -> Mode:
    """KServe's default is Serverless; RawDeployment was renamed Standard in newer releases."""
    value = (isvc.get("metadata", {}).get("annotations") or {}).get(MODE_ANNOTATION, "Serverless")
    return "raw" if value in ("RawDeployment", "Standard") else "serverless"


def check_percent(percent: int) -> int:
    # The CRD has no bounds (150 passes the schema); KServe's webhook enforces 0..100, so fail before the API does.
    if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
        raise ValueError(f"canary traffic percent must be an integer in 0..100, got {percent!r}")
    return percent


def served_version(predictor: dict) -> tuple[str, str]:
    """(model version, storage URI) a predictor spec serves, from its label and its container env."""
    env = {e.get("name"): e.get("value", "") for e in _container(predictor).get("env") or ()}
    version = (predictor.get("labels") or {}).get(VERSION_LABEL) or env.get("SENTIMENTOPS_MODEL_VERSION", "")
    return version, env.get("STORAGE_URI", "")


def _container(predictor: dict) -> dict:
    containers = predictor.get("containers") or []
    return next((c for c in containers if c.get("name") == CONTAINER), containers[0] if containers else {})


def predictor_for(predictor: dict, version: str, storage_uri: str, role: str = "canary") -> dict:
    """The same predictor serving another registered version: STORAGE_URI (KServe downloads it to /mnt/models),
    `--model-dir /mnt/models` instead of `--model-uri`, the version in env and in the pod labels with its role."""
    new = copy.deepcopy(predictor)
    new.pop("canaryTrafficPercent", None)
    new["labels"] = {**(new.get("labels") or {}), VERSION_LABEL: version, ROLE_LABEL: role}
    if not new.get("containers"):
        raise ValueError("the predictor has no containers: this rollout drives the custom sentimentops container")
    container = _container(new)
    args = list(container.get("args") or [])
    for flag in ("--model-uri", "--model-dir"):
        while flag in args:
            i = args.index(flag)
            del args[i:i + 2]
    insert_at = 1 if args[:1] == ["serve"] else 0
    container["args"] = args[:insert_at] + ["--model-dir", MODEL_DIR] + args[insert_at:]
    env = [e for e in container.get("env") or () if e.get("name") not in ("STORAGE_URI", "SENTIMENTOPS_MODEL_VERSION")]
    container["env"] = env + [{"name": "STORAGE_URI", "value": storage_uri},
                              {"name": "SENTIMENTOPS_MODEL_VERSION", "value": version}]
    return new


def _annotations(state: RolloutState) -> dict:
    return {"metadata": {"annotations": state.to_annotations()}}


def canary_patch(isvc: dict, state: RolloutState, mode: Mode) -> dict:
    """Deploy the candidate at state.percent beside the stable predictor."""
    percent = check_percent(state.percent)
    candidate = predictor_for(isvc["spec"]["predictor"], state.candidate_version, state.candidate_uri)
    if mode == "serverless":
        spec = {"predictor": {**candidate, "canaryTrafficPercent": percent}}
    else:
        spec = {"canary": [{"trafficPercent": percent, "predictor": candidate}]}
    return {**_annotations(state), "spec": spec}


def promote_patch(isvc: dict, state: RolloutState, mode: Mode) -> dict:
    """All traffic to the candidate; state.phase should be `promoted`."""
    if mode == "serverless":
        # The promoted revision becomes `stable` (one more revision of the same model, rolled to 100%).
        return {**_annotations(state), "spec": {"predictor": {"canaryTrafficPercent": None,
                                                               "labels": {ROLE_LABEL: "stable"}}}}
    candidate = predictor_for(isvc["spec"]["predictor"], state.candidate_version, state.candidate_uri, "stable")
    return {**_annotations(state), "spec": {"predictor": candidate, "canary": None}}


def rollback_patch(isvc: dict, state: RolloutState, mode: Mode) -> dict:
    """Traffic back to the previous revision and the spec back to the stable model; state.phase `rolled-back`."""
    if mode == "raw":
        return {**_annotations(state), "spec": {"canary": None}}
    previous = json.loads(state.previous_predictor) if state.previous_predictor else None
    if previous is None:
        raise ValueError("no previous predictor recorded: cannot restore the stable revision")
    current = isvc["spec"]["predictor"]
    # Merge patch merges maps: keys the canary added and the previous spec lacks are removed explicitly.
    restored: dict = {k: None for k in current if k not in previous}
    restored.update(previous)
    restored["canaryTrafficPercent"] = 0
    return {**_annotations(state), "spec": {"predictor": restored}}


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch (what the API server applies), for tests and for the local dry run."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def is_ready(isvc: dict, mode: Mode) -> tuple[bool, str]:
    """Ready once KServe has observed the latest spec and reports Ready (and, serverless, the latest revision is
    the latest ready one)."""
    meta, status = isvc.get("metadata", {}), isvc.get("status") or {}
    observed, generation = status.get("observedGeneration"), meta.get("generation")
    if observed is not None and generation is not None and observed < generation:
        return False, f"generation {generation} not yet observed (at {observed})"
    ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    if not ready or ready.get("status") != "True":
        return False, f"Ready is {ready.get('status') if ready else 'absent'}: {(ready or {}).get('message', '')}"
    predictor = (status.get("components") or {}).get("predictor") or {}
    if mode == "serverless" and predictor.get("latestCreatedRevision") != predictor.get("latestReadyRevision"):
        return False, (f"revision {predictor.get('latestCreatedRevision')} not ready "
                       f"(ready: {predictor.get('latestReadyRevision')})")
    return True, "ready"


def event_body(isvc: dict, reason: str, message: str, warning: bool = False) -> dict:
    """A core/v1 Event on the InferenceService (what `kubectl describe isvc` shows)."""
    meta = isvc["metadata"]
    stamp = now_iso().replace("+00:00", "Z")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.rollout-{uuid.uuid4().hex[:10]}", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid")},
        "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
        "source": {"component": "sentimentops-rollout"}, "reportingComponent": "sentimentops-rollout",
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


def in_cluster_namespace(default: str = "sentimentops") -> str:
    return NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else default


class KServeTarget:
    """One InferenceService through the Kubernetes API (custom objects: get + merge-patch; core/v1: events)."""

    kind = "kserve"

    def __init__(self, name: str, namespace: str, *, mode: str = "auto", artifacts_destination: str = "",
                 custom_api=None, core_api=None):
        if custom_api is None or core_api is None:
            from kubernetes import client, config

            config.load_incluster_config()  # the pod's ServiceAccount (RBAC: charts/.../rbac.yaml)
            custom_api, core_api = client.CustomObjectsApi(), client.CoreV1Api()
        self.name, self.namespace = name, namespace
        self.custom, self.core = custom_api, core_api
        self.mode_setting, self.artifacts_destination = mode, artifacts_destination

    def get(self) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)

    def patch(self, body: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, body,
                                                          _content_type="application/merge-patch+json")

    def mode(self, isvc: dict) -> Mode:
        return deployment_mode(isvc) if self.mode_setting == "auto" else self.mode_setting  # type: ignore[return-value]

    def load_state(self) -> RolloutState | None:
        return RolloutState.from_annotations(self.get().get("metadata", {}).get("annotations"))

    def save(self, state: RolloutState) -> None:
        self.patch(_annotations(state))

    def stable(self) -> tuple[str, str]:
        return served_version(self.get()["spec"]["predictor"])

    def artifact_uri(self, version: str, download_uri: str) -> str:
        from sentimentops.steps.rollout.registry import storage_uri

        return storage_uri(download_uri, self.artifacts_destination)

    def deploy(self, state: RolloutState) -> RolloutState:
        isvc = self.get()
        previous = {k: v for k, v in isvc["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
        state = replace(state, previous_predictor=json.dumps(previous, sort_keys=True, separators=(",", ":")))
        self.patch(canary_patch(isvc, state, self.mode(isvc)))
        return state

    def ready(self) -> tuple[bool, str]:
        isvc = self.get()
        return is_ready(isvc, self.mode(isvc))

    def promote(self, state: RolloutState) -> None:
        isvc = self.get()
        self.patch(promote_patch(isvc, state, self.mode(isvc)))

    def rollback(self, state: RolloutState) -> None:
        isvc = self.get()
        self.patch(rollback_patch(isvc, state, self.mode(isvc)))

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.core.create_namespaced_event(self.namespace, event_body(self.get(), reason, message, warning))

    def matchers(self) -> dict[str, str]:
        return {"namespace": self.namespace}

    def soak(self, state: RolloutState):
        return nullcontext()
