"""The rollout's InferenceService patches, both deployment modes, applied as the API server would (RFC 7386 merge
patch) to the chart's own InferenceService and validated strictly against the KServe CRD committed in
workflows/schemas, plus the 0..100 range the CRD does not enforce; and the rollout RBAC the chart grants (read,
not edited, here)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from sentimentops.steps.rollout import kserve
from sentimentops.steps.rollout.state import PREFIX, RolloutState
from sentimentops.workflows.checks.schema_check import schema_errors

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "charts" / "sentimentops" / "templates" / "rbac.yaml"

# What charts/sentimentops/templates/inferenceservice.yaml renders (modelUri mode), as the API server returns it.
ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "sentiment", "namespace": "sentimentops", "uid": "1234", "generation": 3,
                 "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
    "spec": {"predictor": {
        "serviceAccountName": "sentimentops-serving", "minReplicas": 1, "maxReplicas": 3, "timeout": 60,
        "containers": [{
            "name": "kserve-container", "image": "registry/sentimentops-serve:0.1.0", "command": ["sentimentops"],
            "args": ["serve", "--model-uri", "models:/sentiment@champion", "--model-name", "sentiment",
                     "--port", "8080"],
            "env": [{"name": "SENTIMENTOPS_PROFILE", "value": "gke"}, {"name": "HOME", "value": "/tmp"}],
            "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}},
        }],
    }},
}
CANDIDATE = RolloutState(candidate_version="4", candidate_uri="gs://sentimentops-mlflow/artifacts/1/models/m-4",
                         previous_version="3", previous_uri="", phase="canary", started="2026-11-27T03:00:00+00:00",
                         percent=10)


def isvc(mode: str) -> dict:
    doc = copy.deepcopy(ISVC)
    doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
    return doc


def applied(doc: dict, patch: dict) -> dict:
    return kserve.merge_patch(doc, patch)


@pytest.fixture(params=["Serverless", "RawDeployment"])
def mode(request) -> str:
    return request.param


def walk(doc: dict, mode: str) -> dict[str, dict]:
    """canary -> promote, and canary -> rollback, as the target applies them."""
    m = kserve.deployment_mode(doc)
    state = CANDIDATE.__class__(**{**CANDIDATE.__dict__, "previous_predictor": json.dumps(doc["spec"]["predictor"])})
    canary = applied(doc, kserve.canary_patch(doc, state, m))
    promoted = applied(canary, kserve.promote_patch(canary, state.with_phase("promoted"), m))
    rolled = applied(canary, kserve.rollback_patch(canary, state.with_phase("rolled-back"), m))
    return {"canary": canary, "promoted": promoted, "rolled-back": rolled}


def test_every_patched_object_passes_the_strict_crd_schema(mode):
    assert schema_errors(isvc(mode)) == []
    for phase, doc in walk(isvc(mode), mode).items():
        assert schema_errors(doc) == [], phase


def test_serverless_canary_promote_and_rollback():
    docs = walk(isvc("Serverless"), "Serverless")
    pred = docs["canary"]["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 10
    assert kserve.served_version(pred) == ("4", CANDIDATE.candidate_uri)
    container = pred["containers"][0]
    assert container["args"][:3] == ["serve", "--model-dir", "/mnt/models"] and "--model-uri" not in container["args"]
    assert pred["labels"] == {"sentimentops.io/model-version": "4", "sentimentops.io/role": "canary"}
    assert "canary" not in docs["canary"]["spec"]
    # promote: the field is removed, the latest revision (the candidate) takes 100% and becomes `stable`
    assert "canaryTrafficPercent" not in docs["promoted"]["spec"]["predictor"]
    assert docs["promoted"]["spec"]["predictor"]["labels"]["sentimentops.io/role"] == "stable"
    assert kserve.served_version(docs["promoted"]["spec"]["predictor"])[0] == "4"
    # rollback: the previous predictor spec, with 0% to the (restored) latest revision
    back = docs["rolled-back"]["spec"]["predictor"]
    assert back["canaryTrafficPercent"] == 0
    assert {k: v for k, v in back.items() if k != "canaryTrafficPercent"} == ISVC["spec"]["predictor"]


def test_raw_deployment_canary_promote_and_rollback():
    docs = walk(isvc("RawDeployment"), "RawDeployment")
    (canary,) = docs["canary"]["spec"]["canary"]
    assert canary["trafficPercent"] == 10
    assert kserve.served_version(canary["predictor"])[0] == "4"
    assert canary["predictor"]["labels"]["sentimentops.io/role"] == "canary"
    assert docs["canary"]["spec"]["predictor"] == ISVC["spec"]["predictor"]  # stable untouched
    assert docs["promoted"]["spec"]["predictor"]["labels"]["sentimentops.io/role"] == "stable"
    assert "canary" not in docs["promoted"]["spec"]
    assert kserve.served_version(docs["promoted"]["spec"]["predictor"]) == ("4", CANDIDATE.candidate_uri)
    assert docs["rolled-back"]["spec"] == ISVC["spec"]


def test_state_travels_in_the_same_patch_as_the_change(mode):
    docs = walk(isvc(mode), mode)
    for phase, doc in docs.items():
        state = RolloutState.from_annotations(doc["metadata"]["annotations"])
        assert state.phase == phase and state.candidate_version == "4" and state.previous_version == "3"
        assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == mode  # others kept
        assert all(k.startswith(PREFIX) for k in state.to_annotations())


@pytest.mark.parametrize("percent", [-1, 101, 150, 10.5, True])
def test_percent_outside_0_to_100_is_refused_before_the_api(percent, mode):
    state = CANDIDATE.__class__(**{**CANDIDATE.__dict__, "percent": percent})
    with pytest.raises(ValueError, match="0..100"):
        kserve.canary_patch(isvc(mode), state, kserve.deployment_mode(isvc(mode)))


def test_the_schema_alone_would_let_150_through_and_the_checker_does_not():
    doc = walk(isvc("Serverless"), "Serverless")["canary"]
    doc["spec"]["predictor"]["canaryTrafficPercent"] = 150
    assert any("maximum of 100" in e for e in schema_errors(doc))  # the in-memory range fix
    raw = walk(isvc("RawDeployment"), "RawDeployment")["canary"]
    raw["spec"]["canary"][0]["trafficPercent"] = 150
    assert any("maximum of 100" in e for e in schema_errors(raw))  # spec.canary has bounds upstream


def test_a_misspelled_field_in_a_patch_is_caught():
    doc = walk(isvc("RawDeployment"), "RawDeployment")["canary"]
    doc["spec"]["canary"][0]["trafficPercnt"] = 10
    assert any("trafficPercnt" in e for e in schema_errors(doc))


@pytest.mark.parametrize("status, mode, ready", [
    ({"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}],
      "components": {"predictor": {"latestCreatedRevision": "r2", "latestReadyRevision": "r2"}}}, "serverless", True),
    ({"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}],
      "components": {"predictor": {"latestCreatedRevision": "r3", "latestReadyRevision": "r2"}}}, "serverless", False),
    ({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]}, "raw", False),
    ({"conditions": [{"type": "Ready", "status": "False", "message": "pulling"}]}, "raw", False),
    ({"conditions": [{"type": "Ready", "status": "True"}]}, "raw", True),
])
def test_readiness(status, mode, ready):
    assert kserve.is_ready({**ISVC, "status": status}, mode)[0] is ready


def test_event_is_a_core_v1_event_on_the_inference_service():
    body = kserve.event_body(ISVC, "CanaryRolledBack", "p99 +150 ms", warning=True)
    assert body["involvedObject"] == {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                                      "name": "sentiment", "namespace": "sentimentops", "uid": "1234"}
    assert body["type"] == "Warning" and body["metadata"]["namespace"] == "sentimentops"


def _rbac_docs() -> list[dict]:
    # The chart template minus Go templating: enough to read the rollout Role's rules literally.
    text = RBAC.read_text()
    out = []
    for chunk in text.split("\n---"):
        lines = [ln for ln in chunk.splitlines() if not ln.strip().startswith("{{")]
        body = "\n".join(lines).replace("{{ $ns }}", "NS").replace("{{ .Values.inferenceService.name }}", "sentiment")
        body = re.sub(r"\{\{.*?\}\}", "X", body)
        doc = yaml.safe_load(body) if "kind:" in body else None
        if isinstance(doc, dict):
            out.append(doc)
    return out


def test_rollout_rbac_allows_what_the_target_calls_and_nothing_more():
    """KServeTarget calls get + patch on its InferenceService and create on events, in its namespace only."""
    role = next(d for d in _rbac_docs() if d["kind"] == "Role" and d["metadata"]["name"] == "sentimentops-rollout")
    assert role["metadata"]["namespace"] == "NS"
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    isvc_rule = rules[(("serving.kserve.io",), ("inferenceservices",))]
    assert sorted(isvc_rule["verbs"]) == ["get", "patch"] and isvc_rule["resourceNames"] == ["sentiment"]
    assert rules[(("",), ("events",))]["verbs"] == ["create"]
    assert len(role["rules"]) == 2
    binding = next(d for d in _rbac_docs()
                   if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "sentimentops-rollout")
    assert binding["roleRef"]["kind"] == "Role"  # namespace-scoped, never a ClusterRole


class FakeCustomObjects:
    """The API server's side of get + merge-patch, with the verbs the RBAC allows recorded."""

    def __init__(self, doc: dict):
        self.doc, self.calls = copy.deepcopy(doc), []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", plural, name))
        return copy.deepcopy(self.doc)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, _content_type=None):
        assert _content_type == "application/merge-patch+json"
        self.calls.append(("patch", plural, name))
        self.doc = kserve.merge_patch(self.doc, body)
        assert schema_errors(self.doc) == []
        return self.doc


class FakeCore:
    def __init__(self):
        self.events = []

    def create_namespaced_event(self, namespace, body):
        self.events.append((namespace, body))


def test_the_target_uses_only_get_patch_and_event_create(mode):
    custom, core = FakeCustomObjects(isvc(mode)), FakeCore()
    target = kserve.KServeTarget("sentiment", "sentimentops", custom_api=custom, core_api=core)
    state = target.deploy(CANDIDATE)
    assert target.load_state() == state and json.loads(state.previous_predictor) == ISVC["spec"]["predictor"]
    target.rollback(state.with_phase("rolled-back"))
    target.event("CanaryRolledBack", "x", warning=True)
    assert {c[0] for c in custom.calls} == {"get", "patch"}
    assert {c[1:] for c in custom.calls} == {("inferenceservices", "sentiment")}
    assert core.events[0][0] == "sentimentops"
    assert kserve.served_version(custom.doc["spec"]["predictor"])[0] == ""  # back to the chart's modelUri predictor
