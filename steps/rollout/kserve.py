"""The KServe target: pure merge-patch builders for both deployment modes, and the InferenceService through the
official Kubernetes client (in-cluster ServiceAccount; RBAC: get + patch on this InferenceService, create events).

The predictor is KServe's model form: `spec.predictor.model{modelFormat: sentimentops, runtime: sentimentops,
storageUri}` served by the chart's ServingRuntime (its container runs `sentimentops serve --model-dir /mnt/models`;
KServe's storage initializer copies storageUri there). A rollout changes which model is served and nothing else:
in `spec.predictor` it writes only `model.storageUri`, the pod labels `sentimentops.io/model-version` and
`sentimentops.io/role`, and `canaryTrafficPercent`; its state goes into its own `sentimentops.io/rollout-*`
annotations. The chart's ServingRuntime sets SENTIMENTOPS_MODEL_VERSION from the version label (downward API), so
the version a pod reports follows the label with no container env rewritten.

Serverless (Knative revisions): a changed `spec.predictor` is a new revision; `canaryTrafficPercent: P` sends P% to
it and the rest to the previously rolled-out revision. Promote removes the field (the latest revision takes 100%)
and labels it `stable`; roll back restores the previous storageUri and labels with `canaryTrafficPercent: 0`, so
traffic stays on the previously rolled-out revision (KServe's documented rollback) and the spec again describes the
stable model.
RawDeployment / Standard (no revisions; KServe 0.20's `spec.canary: [{trafficPercent, predictor}]`, in the CRD
committed in workflows/schemas/kserve): the canary entry names the candidate only (predictor.name, the model's
storageUri and format, the labels) and KServe builds its predictor from the stable one (v0.20
components/predictor.go buildCanaryPredictor: a deep copy of spec.predictor merged with the entry, autoscaling
fields cleared, replicas from the traffic share), running as Deployment and Service <isvc>-<name>-predictor beside
the untouched `spec.predictor`. The webhook (inference_service_validation.go validateCanarySpecs) requires
predictor.name and Standard mode (RawDeployment is normalised to it) and refuses maxReplicas, scaleTarget,
scaleMetric and autoScaling on a canary, so the entry carries none. Promote writes the candidate's storageUri and
labels into `spec.predictor` and clears `spec.canary`; roll back clears `spec.canary`.

Every patch carries the rollout annotations (sentimentops.steps.rollout.state) in the same request, so the object
and the record of what was done to it can never disagree.
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
MODEL_CONTAINER = "kserve-container"  # KServe's name for the model server container (predictor.model)
# The RawDeployment canary's predictor.name: KServe serves it as Deployment and Service <isvc>-canary-predictor.
CANARY_NAME = "canary"
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
    """(model version, storage URI) a predictor spec serves: its version label and its model.storageUri."""
    return ((predictor.get("labels") or {}).get(VERSION_LABEL, ""),
            (predictor.get("model") or {}).get("storageUri", ""))


def rollout_fields(version: str, storage_uri: str, role: str) -> dict:
    """The only predictor fields a rollout writes (as a merge patch of `spec.predictor`)."""
    return {"model": {"storageUri": storage_uri}, "labels": {VERSION_LABEL: version, ROLE_LABEL: role}}


def current_fields(predictor: dict) -> dict:
    """Those fields' values now, shaped like rollout_fields; an absent one is None, so applying this as a merge
    patch restores the predictor exactly (a label that was not there is removed again)."""
    labels = predictor.get("labels") or {}
    return {"model": {"storageUri": (predictor.get("model") or {}).get("storageUri")},
            "labels": {VERSION_LABEL: labels.get(VERSION_LABEL), ROLE_LABEL: labels.get(ROLE_LABEL)}}


def _stable_predictor(isvc: dict) -> dict:
    predictor = isvc["spec"]["predictor"]
    if not isinstance(predictor.get("model"), dict):
        # A ValueError: the CLI's one-line usage error (exit 2), like every refusal before the API is called.
        raise ValueError(f"InferenceService {isvc['metadata'].get('name')}: spec.predictor has no `model`: the "  # noqa: TRY004
                         "rollout changes predictor.model.storageUri (the chart's ServingRuntime form, "
                         "docs/serving.md), not a custom container")
    return predictor


def predictor_for(predictor: dict, version: str, storage_uri: str, role: str = "canary") -> dict:
    """RawDeployment's canary entry for the candidate: its name, the stable model's format and runtime with the
    candidate's storageUri, and the two labels. KServe fills in the rest from the stable predictor."""
    model = predictor.get("model") or {}
    candidate_model = {"name": MODEL_CONTAINER, "modelFormat": copy.deepcopy(model.get("modelFormat")),
                       **({"runtime": model["runtime"]} if model.get("runtime") else {}), "storageUri": storage_uri}
    # The CRD requires a container name on spec.canary[].predictor.model (not on spec.predictor.model): KServe
    # names the model server's container kserve-container whatever the spec says, so that is the name.
    return {"name": CANARY_NAME, "labels": {VERSION_LABEL: version, ROLE_LABEL: role}, "model": candidate_model}


def _annotations(state: RolloutState) -> dict:
    return {"metadata": {"annotations": state.to_annotations()}}


def canary_patch(isvc: dict, state: RolloutState, mode: Mode) -> dict:
    """Deploy the candidate at state.percent beside the stable predictor."""
    percent = check_percent(state.percent)
    stable = _stable_predictor(isvc)
    if mode == "serverless":
        fields = rollout_fields(state.candidate_version, state.candidate_uri, "canary")
        spec = {"predictor": {**fields, "canaryTrafficPercent": percent}}
    else:
        candidate = predictor_for(stable, state.candidate_version, state.candidate_uri)
        spec = {"canary": [{"trafficPercent": percent, "predictor": candidate}]}
    return {**_annotations(state), "spec": spec}


def promote_patch(isvc: dict, state: RolloutState, mode: Mode) -> dict:
    """All traffic to the candidate; state.phase should be `promoted`. Both modes end with the candidate's
    storageUri and labels (role `stable`) in spec.predictor; the promoted revision (Serverless: one more revision
    of the same model, rolled to 100%) becomes `stable`."""
    _stable_predictor(isvc)
    fields = rollout_fields(state.candidate_version, state.candidate_uri, "stable")
    if mode == "serverless":
        return {**_annotations(state), "spec": {"predictor": {**fields, "canaryTrafficPercent": None}}}
    return {**_annotations(state), "spec": {"predictor": fields, "canary": None}}


def rollback_patch(isvc: dict, state: RolloutState, mode: Mode) -> dict:
    """Traffic back to the previous revision and the spec back to the stable model; state.phase `rolled-back`."""
    if mode == "raw":
        return {**_annotations(state), "spec": {"canary": None}}
    previous = json.loads(state.previous_predictor) if state.previous_predictor else None
    if not isinstance(previous, dict):
        raise ValueError("no previous predictor recorded: cannot restore the stable revision")  # noqa: TRY004
    # current_fields of the recorded predictor: the narrow record this module writes, or a full predictor spec
    # recorded by an older rollout, restore the same three fields.
    return {**_annotations(state), "spec": {"predictor": {**current_fields(previous), "canaryTrafficPercent": 0}}}


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

    def __init__(self, name: str, namespace: str, *, mode: str = "auto", custom_api=None, core_api=None):
        if custom_api is None or core_api is None:
            from kubernetes import client, config

            config.load_incluster_config()  # the pod's ServiceAccount (RBAC: charts/.../rbac.yaml)
            custom_api, core_api = client.CustomObjectsApi(), client.CoreV1Api()
        self.name, self.namespace = name, namespace
        self.custom, self.core = custom_api, core_api
        self.mode_setting = mode

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

    def deploy(self, state: RolloutState) -> RolloutState:
        isvc = self.get()
        # What a Serverless rollback restores: the stable predictor's storageUri and labels, nothing more.
        previous = current_fields(_stable_predictor(isvc))
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
