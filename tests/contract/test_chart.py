"""charts/sentimentops rendered offline with helm-python-sdk (Helm's Go SDK) for the default (kind/CPU) and the GKE
values: core kinds validated by kubernetes-validate --strict, CRD kinds (Argo, KServe, prometheus-operator) by the
strict schema checks of workflows/checks/schema_check.py, the Argo documents identical to `sentimentops render`'s output,
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
RENDERED = REPO / "charts" / "sentimentops" / "files" / "workflows"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
NAMESPACE = "sentimentops"
KUBE_VERSION = "1.30.0"
CRD_GROUPS = ("argoproj.io/", "serving.kserve.io/", "monitoring.coreos.com/")

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")

VALUES = {"default": None, "gke": CHART / "values-gke.yaml"}


def make_chart(tmp: Path) -> Path:
    """A copy of the chart exactly as a clone has it (the Argo and monitoring files live in it)."""
    dst = tmp / "sentimentops"
    shutil.copytree(CHART, dst)
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
    from sentimentops.workflows.checks.schema_check import manifest_errors

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
    assert sources, "charts/sentimentops/files/workflows/ is empty"
    text = "\n".join(helm.Chart.load(chart).render({}, name="s", namespace=NAMESPACE).values())
    for src in sources:
        body = src.read_text()
        assert body.rstrip("\n") in text, f"{src.name} is not included byte for byte"
        for doc in yaml.safe_load_all(body):
            assert doc in docs, f"{src.name}: {doc['kind']}/{doc['metadata']['name']} missing or altered"
    training = by_kind(docs, "WorkflowTemplate")["sentiment-training-v0-1-0"]
    assert training["spec"]["templates"][3]["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}


def test_monitoring_files_are_picked_up_whatever_exists(tmp_path):
    bare = make_chart(tmp_path / "before")
    shutil.rmtree(bare / "files" / "monitoring")
    before = render(bare)
    assert not by_kind(before, "PrometheusRule") and not [d for d in before if d["kind"] == "ConfigMap"]

    fake = bare / "files"
    (fake / "monitoring" / "rules").mkdir(parents=True)
    (fake / "monitoring" / "dashboards").mkdir()
    (fake / "monitoring" / "alertmanager").mkdir()
    groups = {"groups": [{"name": "sentiment-serving", "rules": [
        {"alert": "SentimentHighErrorRate", "expr": "sum(rate(sentiment_errors_total[5m])) > 1", "for": "5m",
         "labels": {"severity": "page"}, "annotations": {"summary": "errors"}}]}]}
    (fake / "monitoring" / "rules" / "serving_alerts.yaml").write_text(yaml.safe_dump(groups))
    (fake / "monitoring" / "dashboards" / "serving.json").write_text(json.dumps({"title": "Serving", "panels": []}))
    (fake / "monitoring" / "alertmanager" / "alertmanager.yaml").write_text("route: {receiver: x}\nreceivers: [{name: x}]\n")
    after = render(bare, {"monitoring": {"alertmanager": {"enabled": True}}})
    rule = by_kind(after, "PrometheusRule")["sentimentops-serving-alerts"]
    assert rule["spec"] == groups and rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dash = by_kind(after, "ConfigMap")["sentimentops-dashboard-serving"]
    assert json.loads(dash["data"]["serving.json"])["title"] == "Serving"
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "alertmanager.yaml" in by_kind(after, "Secret")["sentimentops-alertmanager"]["data"]
    from sentimentops.workflows.checks.schema_check import manifest_errors

    assert manifest_errors(rule) == []


def test_real_monitoring_rules_become_valid_prometheus_rules(rendered):
    _, docs = rendered
    files = sorted((REPO / "charts" / "sentimentops" / "files" / "monitoring" / "rules").glob("*.yaml"))
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
                            "sentimentops-mlflow", "sentiment-retrain-sensor"}
        assert "annotations" not in sas["sentiment-retrain-sensor"]["metadata"]  # no Google identity needed
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


ARGO_WORKFLOW_KINDS = {"Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow"}


@pytest.fixture(scope="module")
def checkov_reports(chart, tmp_path_factory) -> dict[str, dict]:
    if not CHECKOV.exists():
        pytest.skip(f"{CHECKOV} is missing: create the checkov venv with `make tool-venvs`")
    out = tmp_path_factory.mktemp("rendered")
    argo = out / "argo"
    argo.mkdir()
    for name in VALUES:
        docs = render(chart, load_values(name))
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        # checkov's argo_workflows framework runs its checks on every document of a file that holds an Argo
        # object (it flagged the InferenceService's and the EventSource's specs for CKV_ARGO_1/2): give it the
        # Argo Workflows kinds alone.
        argo_docs = [d for d in docs if d.get("kind") in ARGO_WORKFLOW_KINDS]
        (argo / f"{name}.yaml").write_text(yaml.safe_dump_all(argo_docs, sort_keys=False))
    reports: dict[str, dict] = {}
    for folder, framework in ((out, "kubernetes"), (argo, "argo_workflows")):
        proc = subprocess.run([str(CHECKOV), "--skip-download", "-d", str(folder), "--framework", framework,
                               "-o", "json"], check=False, capture_output=True, text=True, timeout=600)
        found = json.loads(proc.stdout)
        reports.update({r["check_type"]: r for r in (found if isinstance(found, list) else [found])})
    return reports


def test_checkov_kubernetes_has_no_failed_checks(checkov_reports):
    report = checkov_reports["kubernetes"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] >= 300
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) >= 30, skipped["check_id"]


def test_checkov_argo_workflows(checkov_reports):
    report = checkov_reports.get("argo_workflows")
    assert report is not None, "checkov found no Argo workflow documents in the rendered chart"
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    # CKV_ARGO_1/2: every WorkflowTemplate/CronWorkflow runs under its ServiceAccount, as non-root.
    assert failed == []
    assert report["summary"]["passed"] >= 2


# ---- wiring for the canary analysis, the drift monitor, the retrain trigger and their secrets ------------------

def _isvc(docs: list[dict]) -> dict:
    return by_kind(docs, "InferenceService")["sentiment"]


def _containers(docs: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in _isvc(docs)["spec"]["predictor"]["containers"]}


def _drift_flags(container: dict) -> dict[str, str]:
    """`sh -c SCRIPT $0 FLAG VALUE ...` -> {flag: value} of the drift-monitor's `drift watch` call."""
    args = container["args"][2:]
    return dict(zip(args[::2], args[1::2], strict=True))


def test_service_monitor_relabels_pod_labels_for_version_and_role(rendered):
    _, docs = rendered
    monitor = by_kind(docs, "ServiceMonitor")["sentiment"]
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert set(endpoints) == {"metrics", "drift-metrics"}
    for endpoint in endpoints.values():
        relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
        assert relabel["model_version"] == ["__meta_kubernetes_pod_label_sentimentops_io_model_version"]
        assert relabel["role"] == ["__meta_kubernetes_pod_label_sentimentops_io_role"]
        assert relabel["pod"] == ["__meta_kubernetes_pod_name"]
    # The label names the rollout writes and the relabelling reads are the same (Prometheus: [^a-zA-Z0-9_] -> _).
    from sentimentops.steps.rollout.kserve import VERSION_LABEL

    assert "__meta_kubernetes_pod_label_" + VERSION_LABEL.replace(".", "_").replace("/", "_").replace("-", "_") \
        == "__meta_kubernetes_pod_label_sentimentops_io_model_version"
    # The recording rules select on exactly these two target labels.
    rules = (REPO / "charts" / "sentimentops" / "files" / "monitoring" / "rules" / "sentiment-recording.yaml").read_text()
    assert 'role="canary"' in rules and "model_version" in rules
    svc = by_kind(docs, "Service")["sentiment-metrics"]
    assert svc["spec"]["selector"] == {"serving.kserve.io/inferenceservice": "sentiment"}
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"metrics": 8080, "drift-metrics": 9108}


def test_initial_predictor_carries_version_and_stable_role_labels(chart):
    labels = _isvc(render(chart))["spec"]["predictor"]["labels"]
    assert labels == {"sentimentops.io/role": "stable"}  # no version given: no empty label value
    isvc = _isvc(render(chart, {"inferenceService": {"modelVersion": "3"}}))
    predictor = isvc["spec"]["predictor"]
    assert predictor["labels"] == {"sentimentops.io/role": "stable", "sentimentops.io/model-version": "3"}
    assert {"name": "SENTIMENTOPS_MODEL_VERSION", "value": "3"} in predictor["containers"][0]["env"]
    from sentimentops.steps.rollout.kserve import predictor_for, served_version
    from sentimentops.workflows.checks.schema_check import manifest_errors

    assert served_version(predictor)[0] == "3"
    # The rollout's candidate keeps the drift sidecar untouched and only rewrites the model server and the label.
    candidate = predictor_for(predictor, "4", "gs://sentimentops-mlflow/artifacts/4")
    assert candidate["labels"]["sentimentops.io/model-version"] == "4"
    assert candidate["containers"][1] == predictor["containers"][1]
    assert "--prediction-log" in candidate["containers"][0]["args"]
    assert manifest_errors(isvc | {"spec": {"predictor": candidate}}) == []
    with pytest.raises(helm.HelmValuesError, match="modelVersion"):
        render(chart, {"inferenceService": {"modelVersion": "v3"}})


def test_drift_monitor_sidecar_reads_the_predictors_records(rendered):
    _, docs = rendered
    containers = _containers(docs)
    assert list(containers) == ["kserve-container", "drift-monitor"]  # the model server stays first
    server, drift = containers["kserve-container"], containers["drift-monitor"]
    records = server["args"][server["args"].index("--prediction-log") + 1]
    flags = _drift_flags(drift)
    assert drift["command"] == ["sh", "-c"] and "sentimentops drift watch \"$@\"" in drift["args"][0]
    assert flags["--records"] == records
    assert flags["--model-dir"] == "/mnt/models"
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "9108"
    assert flags["--webhook-url"] == f"http://sentiment-retrain-eventsource-svc.{NAMESPACE}.svc:12000/retrain"
    assert flags["--webhook-token-file"] == "/etc/sentimentops/retrain-webhook/token"
    # Every flag is one `sentimentops drift watch` accepts.
    helptext = subprocess.run([str(REPO / ".venv" / "bin" / "sentimentops"), "drift", "watch", "--help"],
                              check=True, capture_output=True, text=True, timeout=120).stdout
    assert all(f in helptext for f in flags), flags
    # Knative (Serverless on GKE) allows ports on one container only: the sidecar declares none.
    assert "ports" not in drift and server["ports"][0]["containerPort"] == 8080
    volumes = {v["name"]: v for v in _isvc(docs)["spec"]["predictor"]["volumes"]}
    mounts = {m["name"]: m for m in drift["volumeMounts"]}
    assert {m["name"]: m["mountPath"] for m in server["volumeMounts"]}["predictions"] == str(Path(records).parent)
    assert mounts["predictions"]["readOnly"] is True and "emptyDir" in volumes["predictions"]
    # KServe's storage-initializer volume, declared so the sidecar shares the model folder (and its reference).
    assert mounts["kserve-provision-location"] == {"name": "kserve-provision-location", "mountPath": "/mnt/models",
                                                   "readOnly": True}
    assert volumes["kserve-provision-location"] == {"name": "kserve-provision-location", "emptyDir": {}}
    assert volumes["retrain-webhook"]["secret"] == {"secretName": "sentiment-retrain-webhook", "optional": True}
    assert drift["image"] == server["image"]


def test_drift_monitor_can_be_switched_off_and_pointed_elsewhere(chart):
    off = render(chart, {"drift": {"enabled": False}})
    assert list(_containers(off)) == ["kserve-container"]
    assert "--prediction-log" not in _containers(off)["kserve-container"]["args"]
    assert [e["port"] for e in by_kind(off, "ServiceMonitor")["sentiment"]["spec"]["endpoints"]] == ["metrics"]
    # No EventSource installed (kind): no webhook, no token mount.
    kind = render(chart, {"workflows": {"kinds": ["WorkflowTemplate", "CronWorkflow"]}})
    flags = _drift_flags(_containers(kind)["drift-monitor"])
    assert "--webhook-url" not in flags and "--webhook-token-file" not in flags
    assert "retrain-webhook" not in {v["name"] for v in _isvc(kind)["spec"]["predictor"]["volumes"]}
    assert "sentiment-retrain-sensor" not in by_kind(kind, "Role")
    elsewhere = render(chart, {"drift": {"webhookUrl": "http://hooks.example:8080/retrain"},
                               "secrets": {"retrainWebhook": {"existingSecret": "sentiment-retrain-webhook"}}})
    assert _drift_flags(_containers(elsewhere)["drift-monitor"])["--webhook-url"] == "http://hooks.example:8080/retrain"
    with pytest.raises(helm.HelmValuesError, match="port"):
        render(chart, {"drift": {"port": 8080}})


def test_retrain_sensor_may_only_create_workflows_here(rendered):
    _, docs = rendered
    sensor = next(d for d in docs if d["kind"] == "Sensor")
    account = sensor["spec"]["template"]["serviceAccountName"]
    assert account == "sentiment-retrain-sensor" and account in by_kind(docs, "ServiceAccount")
    assert by_kind(docs, "ServiceAccount")[account]["automountServiceAccountToken"] is True
    role = by_kind(docs, "Role")[account]
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["create"]}]
    binding = by_kind(docs, "RoleBinding")[account]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    # What the trigger submits is a Workflow (in the Sensor's namespace) from a template this chart installs.
    resource = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]["source"]["resource"]
    assert resource["kind"] == "Workflow" and "namespace" not in resource["metadata"]
    assert resource["spec"]["workflowTemplateRef"]["name"] in by_kind(docs, "WorkflowTemplate")


def test_secrets_come_only_from_values(chart, rendered):
    _, docs = rendered
    assert not {"sentiment-retrain-webhook", "sentiment-alertmanager-slack"} & set(by_kind(docs, "Secret"))
    eventsource = next(d for d in docs if d["kind"] == "EventSource")
    assert eventsource["spec"]["webhook"]["drift"]["authSecret"] == {"key": "token", "name": "sentiment-retrain-webhook"}
    alertmanager = (REPO / "charts" / "sentimentops" / "files" / "monitoring" / "alertmanager" / "alertmanager.yaml").read_text()
    assert "/etc/alertmanager/secrets/sentiment-alertmanager-slack/webhook-url" in alertmanager
    assert "/etc/alertmanager/secrets/sentiment-retrain-webhook/token" in alertmanager

    import base64

    given = render(chart, {"secrets": {"retrainWebhook": {"token": "t0ken\n"},
                                       "alertmanagerSlack": {"webhookUrl": "https://hooks.slack.com/services/X/Y/Z"}}})
    secrets = by_kind(given, "Secret")
    assert base64.b64decode(secrets["sentiment-retrain-webhook"]["data"]["token"]) == b"t0ken"
    assert base64.b64decode(secrets["sentiment-alertmanager-slack"]["data"]["webhook-url"]) \
        == b"https://hooks.slack.com/services/X/Y/Z"
    existing = render(chart, {"secrets": {"retrainWebhook": {"existingSecret": "sentiment-retrain-webhook"}}})
    assert "sentiment-retrain-webhook" not in by_kind(existing, "Secret")
    no_events = {"workflows": {"kinds": ["WorkflowTemplate"]}, "drift": {"webhookUrl": "http://hook:1/retrain"},
                 "secrets": {"retrainWebhook": {"existingSecret": "my-token"}}}
    volumes = {v["name"]: v for v in _isvc(render(chart, no_events))["spec"]["predictor"]["volumes"]}
    assert volumes["retrain-webhook"]["secret"]["secretName"] == "my-token"
    with pytest.raises(helm.HelmError, match="EventSource"):
        render(chart, {"secrets": {"retrainWebhook": {"existingSecret": "my-token"}}})
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"secrets": {"retrainWebhook": {"existingSecret": "a", "token": "b"}}})
    with pytest.raises(helm.HelmValuesError, match="webhookUrl"):
        render(chart, {"secrets": {"alertmanagerSlack": {"webhookUrl": "http://example.com/x"}}})
    # No secret value has a default anywhere in the chart.
    for values in (CHART / "values.yaml", CHART / "values-gke.yaml"):
        secrets_values = (yaml.safe_load(values.read_text()) or {}).get("secrets", {})
        assert all(v == "" for s in secrets_values.values() for v in s.values()), values


def test_rollout_prometheus_default_is_the_charts_prometheus():
    import re

    cli = (REPO / "steps" / "rollout" / "cli.py").read_text()
    workflow = (REPO / "workflows" / "definitions" / "rollout.py").read_text()
    (cli_default,) = re.findall(r'^DEFAULT_CLUSTER_PROMETHEUS = "([^"]+)"', cli, re.MULTILINE)
    (wf_default,) = re.findall(r'^DEFAULT_PROMETHEUS = "([^"]+)"', workflow, re.MULTILINE)
    defaults = {f"{src.stem}:{p['name']}": p.get("value") for src in RENDERED.glob("*.yaml")
                for doc in yaml.safe_load_all(src.read_text()) if doc and doc["kind"] == "WorkflowTemplate"
                for p in doc["spec"].get("arguments", {}).get("parameters", []) if p["name"].endswith("prometheus-url")}
    assert set(defaults) == {"sentiment-rollout:prometheus-url", "sentiment-training:rollout-prometheus-url"}
    assert set(defaults.values()) == {wf_default}, defaults
    for name in VALUES:
        assert _prometheus_url(name) == cli_default == wf_default, name
    # kube-prometheus-stack's operator names the Service prometheus-operated, in the namespace the stack lives in;
    # the chart's ServiceMonitor/PrometheusRule labels select that stack.
    assert re.match(r"^http://prometheus-operated\.[a-z0-9-]+\.svc:9090$", cli_default)
    assert yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["serviceMonitor"]["labels"] \
        == {"release": "kube-prometheus-stack"}


def _prometheus_url(values_name: str) -> str:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["prometheus"]["url"]
    return ((load_values(values_name).get("monitoring") or {}).get("prometheus") or {}).get("url", defaults)
