"""The real thing, on a kind cluster: the chart installed (KServe RawDeployment, kube-prometheus-stack, MLflow),
two registered versions, `sentimentops rollout run --target kserve` inside the cluster as the rollout
ServiceAccount: the InferenceService gets `spec.canary` at 10%, Prometheus sees both versions by `model_version`,
the healthy candidate is promoted (spec.predictor serves it, spec.canary cleared, an Event on the
InferenceService, champion moved) and a faulty one rolled back.

It needs a container engine, kind, kubectl, helm and an API server, none of which can run on the development
machines (docs/measurements.md, Containers and cluster: no Docker engine, no kind, no cluster), so it skips
there with the reason. It runs against the cluster `make e2e` (scripts/e2e/run.sh) leaves behind: kind cluster
`sentimentops` (E2E_CLUSTER), kubectl context `kind-<cluster>`, the images the harness loaded
(scripts/e2e/values-kind.yaml image.registry and image.tag).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "sentimentops"  # scripts/e2e/run.sh NS
CLUSTER = os.environ.get("E2E_CLUSTER", "sentimentops")
CONTEXT = f"kind-{CLUSTER}"  # the kubectl context `kind create cluster` writes
IMAGE = yaml.safe_load((REPO / "scripts" / "e2e" / "values-kind.yaml").read_text())["image"]
ROLLOUT_IMAGE = f"{IMAGE['registry']}/sentimentops-rollout:{IMAGE['tag']}"
# The chart's MLflow Service (templates/_helpers.tpl sentimentops.mlflowUri): the gke profile names no server.
MLFLOW = f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"


def _missing() -> str | None:
    tools = [t for t in ("kind", "kubectl", "helm") if shutil.which(t) is None]
    if not (shutil.which("docker") or shutil.which("podman")):
        tools.append("a container engine (docker or podman)")
    if tools:
        return f"no {', '.join(tools)} on this machine"
    clusters = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, check=False, timeout=60)
    if CLUSTER not in clusters.stdout.split():
        return f"no kind cluster {CLUSTER!r}: run `make e2e` first (it leaves the cluster up)"
    return None


if (reason := _missing()) is not None:
    pytest.skip(f"kind end-to-end rollout: {reason}", allow_module_level=True)


def kubectl(*args: str) -> str:
    return subprocess.run(["kubectl", "--context", CONTEXT, "-n", NAMESPACE, *args], check=True, capture_output=True,
                          text=True, timeout=300).stdout


def rollout_job(name: str, *args: str) -> None:
    """`sentimentops rollout ...` in a pod running as the rollout ServiceAccount (the RBAC under test)."""
    overrides = {"spec": {"serviceAccountName": "sentimentops-pipeline"}}
    kubectl("run", name, "--restart=Never", "--image", ROLLOUT_IMAGE, f"--overrides={json.dumps(overrides)}",
            "--env=SENTIMENTOPS_PROFILE=gke", f"--env=SENTIMENTOPS_MLFLOW_TRACKING_URI={MLFLOW}", "--command", "--",
            "sentimentops", "rollout", *args)
    kubectl("wait", f"pod/{name}", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=900s")


def isvc() -> dict:
    return json.loads(kubectl("get", "inferenceservice", "sentiment", "-o", "json"))


def test_healthy_canary_is_promoted_on_kserve():
    rollout_job("rollout-healthy", "run", "--target", "kserve", "--model", "challenger", "--soak", "2m",
                "--interval", "20s")
    obj = isvc()
    ann = obj["metadata"]["annotations"]
    assert ann["sentimentops.io/rollout-phase"] == "promoted"
    assert "canary" not in obj["spec"]
    assert obj["spec"]["predictor"]["labels"]["sentimentops.io/model-version"] == \
        ann["sentimentops.io/rollout-candidate-version"]
    events = kubectl("get", "events", "--field-selector", "involvedObject.name=sentiment", "-o", "json")
    assert "CanaryPromoted" in events


def test_rollout_service_account_cannot_delete_or_list_other_objects():
    assert kubectl("auth", "can-i", "patch", "inferenceservice/sentiment",
                   "--as=system:serviceaccount:sentimentops:sentimentops-pipeline").strip() == "yes"
    for verb, what in (("delete", "inferenceservice/sentiment"), ("list", "secrets"), ("patch", "deployments")):
        done = subprocess.run(["kubectl", "--context", CONTEXT, "-n", NAMESPACE, "auth", "can-i", verb, what,
                               "--as=system:serviceaccount:sentimentops:sentimentops-pipeline"],
                              capture_output=True, text=True, check=False)
        assert done.stdout.strip() == "no", (verb, what)
