"""The rollout's InferenceService patches, both deployment modes, applied as the API server would (RFC 7386 merge
patch) to the chart's own InferenceService and validated strictly against the KServe CRD committed in
workflows/schemas, plus the 0..100 range the CRD does not enforce; that a patch writes nothing but the storage URI,
the two predictor labels, the canary share and the rollout's own annotations; and the rollout RBAC the chart
grants (read, not edited, here)."""
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

# The chart's InferenceService (charts/sentimentops/templates/inferenceservice.yaml: KServe's model form over the
# chart's ServingRuntime, which carries the containers), as the API server returns it.
ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "sentiment", "namespace": "sentimentops", "uid": "1234", "generation": 3,
                 "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
    "spec": {"predictor": {
        "labels": {"sentimentops.io/role": "stable"},
        "serviceAccountName": "sentimentops-serving", "minReplicas": 1, "maxReplicas": 3, "scaleMetric": "concurrency",
        "scaleTarget": 4, "timeout": 60, "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
        "model": {"modelFormat": {"name": "sentimentops"}, "runtime": "sentimentops",
                  "storageUri": "gs://bucket/artifacts/1/models/m-3/artifacts",
                  "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}},
    }},
}
CANDIDATE = RolloutState(candidate_version="4", candidate_uri="gs://bucket/artifacts/1/models/m-4/artifacts",
                         previous_version="3", previous_uri="", phase="canary", started="2026-11-27T03:00:00+00:00",
                         percent=10)
# The only places in spec.predictor a rollout may write (contract: the storage URI, the labels, the canary share).
ALLOWED = {("model", "storageUri"), ("labels", kserve.VERSION_LABEL), ("labels", kserve.ROLE_LABEL),
           ("canaryTrafficPercent",)}


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
    previous = json.dumps(kserve.current_fields(doc["spec"]["predictor"]))
    state = CANDIDATE.__class__(**{**CANDIDATE.__dict__, "previous_predictor": previous})
    canary = applied(doc, kserve.canary_patch(doc, state, m))
    promoted = applied(canary, kserve.promote_patch(canary, state.with_phase("promoted"), m))
    rolled = applied(canary, kserve.rollback_patch(canary, state.with_phase("rolled-back"), m))
    return {"canary": canary, "promoted": promoted, "rolled-back": rolled}


def leaves(value: object, path: tuple = ()) -> dict[tuple, object]:
    """Every leaf of a JSON document by path (lists are leaves: a merge patch replaces them whole)."""
    if isinstance(value, dict) and value:
        out: dict[tuple, object] = {}
        for key, inner in value.items():
            out.update(leaves(inner, path + (key,)))
        return out
    return {path: value}


def changed(before: dict, after: dict) -> set[tuple]:
    a, b = leaves(before), leaves(after)
    return {p for p in set(a) | set(b) if a.get(p, "<absent>") != b.get(p, "<absent>")}


def test_every_patched_object_passes_the_strict_crd_schema(mode):
    assert schema_errors(isvc(mode)) == []
    for phase, doc in walk(isvc(mode), mode).items():
        assert schema_errors(doc) == [], phase


def test_a_patch_writes_only_the_storage_uri_the_labels_the_share_and_its_annotations(mode):
    """No container, arg, env or resource of the chart's predictor is rewritten, in either mode: what KServe
    serves changes through predictor.model.storageUri alone (RawDeployment's spec.canary carries a copy of the
    stable predictor that differs in exactly those fields)."""
    doc, m = isvc(mode), kserve.deployment_mode(isvc(mode))
    state = CANDIDATE.__class__(**{**CANDIDATE.__dict__, "previous_predictor": json.dumps(
        kserve.current_fields(doc["spec"]["predictor"]))})
    for build, phase in ((kserve.canary_patch, "canary"), (kserve.promote_patch, "promoted"),
                         (kserve.rollback_patch, "rolled-back")):
        patch = build(doc, state.with_phase(phase), m)
        assert set(patch) <= {"metadata", "spec"}
        assert set(patch["metadata"]) == {"annotations"}
        assert all(k.startswith(PREFIX) for k in patch["metadata"]["annotations"])
        assert set(patch["spec"]) <= ({"predictor", "canary"} if m == "raw" else {"predictor"}), phase
        if "predictor" in patch["spec"]:
            for path in leaves(patch["spec"]["predictor"]):
                assert path in ALLOWED, (phase, path)
        for entry in patch["spec"].get("canary") or []:
            # KServe builds the canary from the stable predictor and this entry (buildCanaryPredictor: a deep copy
            # merged with the entry): what it serves differs from the stable predictor in the allowed fields only,
            # plus the names KServe requires there (the canary's predictor.name, the model container's name).
            built = kserve.merge_patch(doc["spec"]["predictor"], entry["predictor"])
            assert changed(doc["spec"]["predictor"], built) <= ALLOWED | {("name",), ("model", "name")}, phase
    for phase, after in walk(doc, mode).items():
        assert changed(doc["spec"]["predictor"], after["spec"]["predictor"]) <= ALLOWED, phase
        meta = changed(doc["metadata"], after["metadata"])
        assert all(p[0] == "annotations" and p[1].startswith(PREFIX) for p in meta), (phase, meta)


def test_serverless_canary_promote_and_rollback():
    docs = walk(isvc("Serverless"), "Serverless")
    pred = docs["canary"]["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 10
    assert kserve.served_version(pred) == ("4", CANDIDATE.candidate_uri)
    assert pred["labels"] == {"sentimentops.io/model-version": "4", "sentimentops.io/role": "canary"}
    assert pred["model"]["runtime"] == "sentimentops" and pred["model"]["resources"] == \
        ISVC["spec"]["predictor"]["model"]["resources"]
    assert {k: v for k, v in pred.items() if k not in ("labels", "model", "canaryTrafficPercent")} == \
        {k: v for k, v in ISVC["spec"]["predictor"].items() if k not in ("labels", "model")}  # the rest untouched
    assert "canary" not in docs["canary"]["spec"]
    # promote: the field is removed, the latest revision (the candidate) takes 100% and becomes `stable`
    assert "canaryTrafficPercent" not in docs["promoted"]["spec"]["predictor"]
    assert docs["promoted"]["spec"]["predictor"]["labels"]["sentimentops.io/role"] == "stable"
    assert kserve.served_version(docs["promoted"]["spec"]["predictor"]) == ("4", CANDIDATE.candidate_uri)
    # rollback: the previous storageUri and labels (the version label was absent: absent again), 0% to the latest
    back = docs["rolled-back"]["spec"]["predictor"]
    assert back["canaryTrafficPercent"] == 0
    assert {k: v for k, v in back.items() if k != "canaryTrafficPercent"} == ISVC["spec"]["predictor"]


@pytest.mark.parametrize("annotation", ["RawDeployment", "Standard"])
def test_the_raw_canary_entry_is_what_kserves_webhook_accepts(annotation):
    """KServe 0.20 validateCanarySpecs (inference_service_validation.go): Standard mode (RawDeployment is normalised
    to it by the defaulter), a stable predictor with a model, predictor.name set and unlike the stable one's,
    trafficPercent in 0..100, and no maxReplicas, scaleTarget, scaleMetric or autoScaling on the canary (it runs
    fixed replicas derived from its share)."""
    doc = isvc(annotation)
    assert kserve.deployment_mode(doc) == "raw"
    (entry,) = kserve.canary_patch(doc, CANDIDATE, "raw")["spec"]["canary"]
    predictor = entry["predictor"]
    assert predictor["name"] == kserve.CANARY_NAME and predictor["name"] != doc["spec"]["predictor"].get("name")
    assert 0 <= entry["trafficPercent"] <= 100
    assert not {"maxReplicas", "scaleTarget", "scaleMetric", "autoScaling", "workerSpec"} & set(predictor)
    assert predictor["model"] == {"name": "kserve-container", "modelFormat": {"name": "sentimentops"},
                                  "runtime": "sentimentops", "storageUri": CANDIDATE.candidate_uri}
    assert kserve.deployment_mode(isvc("Serverless")) == kserve.deployment_mode(isvc("Knative")) == "serverless"


def test_raw_deployment_canary_promote_and_rollback():
    docs = walk(isvc("RawDeployment"), "RawDeployment")
    (canary,) = docs["canary"]["spec"]["canary"]
    assert canary["trafficPercent"] == 10
    assert kserve.served_version(canary["predictor"]) == ("4", CANDIDATE.candidate_uri)
    assert canary["predictor"]["labels"]["sentimentops.io/role"] == "canary"
    assert docs["canary"]["spec"]["predictor"] == ISVC["spec"]["predictor"]  # stable untouched
    assert docs["promoted"]["spec"]["predictor"]["labels"]["sentimentops.io/role"] == "stable"
    assert "canary" not in docs["promoted"]["spec"]
    assert kserve.served_version(docs["promoted"]["spec"]["predictor"]) == ("4", CANDIDATE.candidate_uri)
    assert docs["rolled-back"]["spec"] == ISVC["spec"]


def test_served_version_is_the_predictor_label_and_storage_uri():
    predictor = {"labels": {kserve.VERSION_LABEL: "7"}, "model": {"storageUri": "gs://b/x"}}
    assert kserve.served_version(predictor) == ("7", "gs://b/x")
    assert kserve.served_version({"model": {}}) == ("", "")


def test_serverless_rollback_restores_an_older_full_predictor_record_too():
    """A rollout recorded by an earlier release kept the whole predictor spec in -previous-predictor: rollback
    still restores only the storage URI and the labels from it."""
    doc = isvc("Serverless")
    state = CANDIDATE.__class__(**{**CANDIDATE.__dict__, "previous_predictor": json.dumps(doc["spec"]["predictor"])})
    canary = applied(doc, kserve.canary_patch(doc, state, "serverless"))
    patch = kserve.rollback_patch(canary, state.with_phase("rolled-back"), "serverless")
    assert set(leaves(patch["spec"]["predictor"])) <= ALLOWED
    back = applied(canary, patch)["spec"]["predictor"]
    assert kserve.served_version(back) == ("", ISVC["spec"]["predictor"]["model"]["storageUri"])


def test_a_predictor_without_model_is_refused_with_a_message(mode):
    doc = isvc(mode)
    doc["spec"]["predictor"].pop("model")
    doc["spec"]["predictor"]["containers"] = [{"name": "kserve-container", "image": "registry/custom:1"}]
    with pytest.raises(ValueError, match="predictor has no `model`"):
        kserve.canary_patch(doc, CANDIDATE, kserve.deployment_mode(doc))


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
    assert target.load_state() == state
    assert json.loads(state.previous_predictor) == kserve.current_fields(ISVC["spec"]["predictor"])
    target.rollback(state.with_phase("rolled-back"))
    target.event("CanaryRolledBack", "x", warning=True)
    assert {c[0] for c in custom.calls} == {"get", "patch"}
    assert {c[1:] for c in custom.calls} == {("inferenceservices", "sentiment")}
    assert core.events[0][0] == "sentimentops"
    assert custom.doc["spec"]["predictor"]["model"] == ISVC["spec"]["predictor"]["model"]  # back to the chart's
    assert kserve.served_version(custom.doc["spec"]["predictor"])[0] == ""
