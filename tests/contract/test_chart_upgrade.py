"""A later `helm upgrade` never undoes a promotion.

Replayed offline, as Helm 3 and the API server do it: release 1 is installed (its manifest becomes the live
object); the rollout promotes a new version with the very patches steps/rollout/kserve.py sends (RFC 7386 merge
patches); release 2 is rendered with a new image tag and new resources; Helm 3 sends the InferenceService (a custom
resource, an unstructured object) the two-way JSON merge patch from release 1's manifest to release 2's
(helm v3.21.4 pkg/kube/client.go: Client.Update -> update(threeWayMerge=false) -> updateResource -> createPatch ->
jsonpatch.CreateMergePatch(oldData, newData), where oldData is the previous release's manifest object, not the
live one); the API server applies it. The served model (storageUri, the version and role labels, the canary share)
must be what the rollout left, while the image (ServingRuntime) and the resources (InferenceService) changed.

helm-python-sdk renders offline, so the template's `lookup` of the live object returns nothing here: this is the
pessimistic path, where the chart's manifest comes from values alone."""

from __future__ import annotations

import copy

import pytest

from sentimentops.steps.rollout import kserve
from sentimentops.steps.rollout.state import RolloutState
from tests.contract.test_chart import MODEL, chart, load_values, one, render

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
__all__ = ["chart"]  # the module-scoped chart fixture of test_chart.py, shared

CANDIDATE_URI = "gs://bucket/artifacts/1/models/m-4/artifacts"


def create_merge_patch(old: object, new: object) -> object:
    """RFC 7386 merge patch turning `old` into `new`, as evanphx/json-patch CreateMergePatch builds it: objects
    recursively (a key gone from `new` -> null), anything else (lists included) replaced whole when different."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return copy.deepcopy(new)
    patch: dict = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            if isinstance(old[key], dict) and isinstance(value, dict):
                patch[key] = create_merge_patch(old[key], value)
            else:
                patch[key] = copy.deepcopy(value)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def served(isvc: dict) -> dict:
    predictor = isvc["spec"]["predictor"]
    return {"storageUri": predictor["model"]["storageUri"], "labels": predictor.get("labels"),
            "canaryTrafficPercent": predictor.get("canaryTrafficPercent"), "canary": isvc["spec"].get("canary")}


def as_stored(manifest: dict) -> dict:
    """What the API server keeps after create: the manifest plus server-side fields (the patch must leave them)."""
    live = copy.deepcopy(manifest)
    live["metadata"].update(uid="5d0c", generation=1, resourceVersion="100")
    live["status"] = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}
    return live


def rollout_state(phase: str) -> RolloutState:
    return RolloutState(candidate_version="4", candidate_uri=CANDIDATE_URI, previous_version="3",
                        previous_uri=MODEL["storageUri"], phase=phase, started="2026-11-27T03:00:00+00:00", percent=10)


def release(chart, values_name: str, **changes) -> list[dict]:
    values = copy.deepcopy(load_values(values_name))
    for key, value in changes.items():
        values.setdefault(key, {}).update(value)
    return render(chart, values, is_upgrade=bool(changes))


RELEASE_2 = {"image": {"tag": "0.2.0"},
             "inferenceService": {"resources": {"requests": {"cpu": "2", "memory": "3Gi"},
                                                "limits": {"cpu": "4", "memory": "6Gi"}}}}


@pytest.mark.parametrize("values_name, mode", [("gke", "serverless"), ("default", "raw")])
@pytest.mark.parametrize("stage", ["promoted", "canary"])
def test_helm_upgrade_keeps_the_model_the_rollout_serves(chart, values_name, mode, stage):
    r1 = release(chart, values_name)
    isvc_1 = one(r1, "InferenceService")
    assert kserve.deployment_mode(isvc_1) == mode
    live = as_stored(isvc_1)

    # The rollout: the canary, then (stage promoted) the promotion, with the patches the rollout sends.
    live = kserve.merge_patch(live, kserve.canary_patch(live, rollout_state("canary"), mode))
    if stage == "promoted":
        live = kserve.merge_patch(live, kserve.promote_patch(live, rollout_state("promoted"), mode))
        assert kserve.served_version(live["spec"]["predictor"]) == ("4", CANDIDATE_URI)
        assert live["spec"]["predictor"]["labels"][kserve.ROLE_LABEL] == "stable"
    before = served(live)
    annotations = dict(live["metadata"]["annotations"])

    # Release 2: a new image tag and new resources; Helm patches release 1's manifest -> release 2's.
    r2 = release(chart, values_name, **RELEASE_2)
    isvc_2 = one(r2, "InferenceService")
    patch = create_merge_patch(isvc_1, isvc_2)
    upgraded = kserve.merge_patch(live, patch)

    assert served(upgraded) == before  # the model the rollout serves, its labels and its traffic share
    assert upgraded["metadata"]["annotations"] == annotations  # the rollout's state record too
    assert upgraded["status"] == live["status"] and upgraded["metadata"]["uid"] == "5d0c"
    # ... while what the release changes did change.
    assert upgraded["spec"]["predictor"]["model"]["resources"] == RELEASE_2["inferenceService"]["resources"]
    assert patch["spec"]["predictor"]["model"] == {"resources": RELEASE_2["inferenceService"]["resources"]}
    images_1 = {c["image"] for c in one(r1, "ServingRuntime")["spec"]["containers"]}
    images_2 = {c["image"] for c in one(r2, "ServingRuntime")["spec"]["containers"]}
    assert images_1 != images_2 and all(i.endswith(":0.2.0") for i in images_2)


def test_the_replay_would_catch_a_chart_that_rewrites_the_served_model(chart):
    # The same replay against a release 2 whose manifest names another model (what rendering the model from values
    # does when values change and the live object is not looked up): the promotion is undone. The test above fails
    # exactly when the chart's manifest changes a served-model field between releases.
    r1 = release(chart, "gke")
    isvc_1 = one(r1, "InferenceService")
    live = as_stored(isvc_1)
    live = kserve.merge_patch(live, kserve.canary_patch(live, rollout_state("canary"), "serverless"))
    live = kserve.merge_patch(live, kserve.promote_patch(live, rollout_state("promoted"), "serverless"))
    r2 = release(chart, "gke", inferenceService={"storageUri": "gs://bucket/artifacts/1/models/m-2/artifacts",
                                                 "modelVersion": "2"})
    upgraded = kserve.merge_patch(live, create_merge_patch(isvc_1, one(r2, "InferenceService")))
    assert kserve.served_version(upgraded["spec"]["predictor"]) == ("2", "gs://bucket/artifacts/1/models/m-2/artifacts")


def test_create_merge_patch_round_trips():
    old = {"a": {"b": 1, "c": [1, 2]}, "d": "x", "gone": 1}
    new = {"a": {"b": 2, "c": [1, 2]}, "d": "x", "added": {"k": "v"}}
    patch = create_merge_patch(old, new)
    assert patch == {"a": {"b": 2}, "gone": None, "added": {"k": "v"}}
    assert kserve.merge_patch(old, patch) == new
