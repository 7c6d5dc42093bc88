"""charts/sentimentops rendered offline with helm-python-sdk (Helm's Go SDK) for the default (kind/CPU) and the GKE
values: core kinds validated by kubernetes-validate --strict, CRD kinds by strict schemas (Argo, KServe
InferenceService, prometheus-operator, the EventBus through workflows/checks/schema_check.py;
the ServingRuntime as far as can be done offline, see servingruntime_errors), the Argo documents equal
to `sentimentops render`'s output with exactly the chart-owned fields changed, strict `helm lint`,
values.schema.json, and checkov on the rendered output. Values reaching every document, the Argo plumbing and the
KServe shape: test_chart_values.py; a `helm upgrade` over a promoted InferenceService: test_chart_upgrade.py."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sentimentops"
RENDERED = CHART / "files" / "workflows"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
NAMESPACE = "sentimentops"
KUBE_VERSION = "1.30.0"
CRD_GROUPS = ("argoproj.io/", "serving.kserve.io/", "monitoring.coreos.com/")
NOTES = "sentimentops/templates/NOTES.txt"

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")

# A served model, so the InferenceService renders (without a storage URI the chart renders none).
MODEL = {"storageUri": "gs://bucket/artifacts/1/models/m-3/artifacts", "modelVersion": "3"}


def load_values(name: str) -> dict:
    """default: values.yaml alone (kind); gke: values-gke.yaml. Both with a served model."""
    values = yaml.safe_load((CHART / "values-gke.yaml").read_text()) if name == "gke" else {}
    values = copy.deepcopy(values)
    values.setdefault("inferenceService", {}).update(MODEL)
    return values


VALUES = ("default", "gke")


def make_chart(tmp: Path) -> Path:
    """A copy of the chart exactly as a clone has it (the Argo and monitoring files live in it: no copy step)."""
    dst = tmp / "sentimentops"
    shutil.copytree(CHART, dst)
    return dst


def render_text(chart: Path, values: dict | None = None, *, is_upgrade: bool = False) -> dict[str, str]:
    return helm.Chart.load(chart).render(values or {}, name="sentimentops", namespace=NAMESPACE,
                                         is_install=not is_upgrade, is_upgrade=is_upgrade)


def render(chart: Path, values: dict | None = None, *, is_upgrade: bool = False) -> list[dict]:
    out = render_text(chart, values, is_upgrade=is_upgrade)
    return [d for path, text in out.items() if path != NOTES for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> Path:
    return make_chart(tmp_path_factory.mktemp("chart"))


@pytest.fixture(scope="module", params=VALUES)
def rendered(request, chart) -> tuple[str, list[dict]]:
    return request.param, render(chart, load_values(request.param))


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = by_kind(docs, kind).values()
    return doc


# ---- strict schemas for the kinds schema_check.SOURCES does not list ------------------------------------------

def argo_schema_errors(definition: str, value: dict) -> list[str]:
    """Strict errors of `value` against one definition of Argo Workflows' schema.json (e.g. ArtifactRepository)."""
    import jsonschema

    from sentimentops.workflows.checks.schema_check import schemas_dir, strictify

    raw = json.loads((schemas_dir() / "argo-workflows" / "schema.json").read_text())
    schema = {"$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{definition}", "definitions": raw["definitions"]}
    strictify(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in jsonschema.Draft7Validator(schema).iter_errors(value))


# KServe's ServingRuntime CRD is not among the committed schemas (workflows/schemas has the InferenceService CRD
# only), so its spec is checked against the Go type it is generated from (kserve/kserve v0.20,
# pkg/apis/serving/v1alpha1/servingruntime_types.go ServingRuntimeSpec + inline ServingRuntimePodSpec: these json
# field names and nothing else), and its pod part (containers, volumes) by kubernetes-validate --strict as a Pod.
SERVING_RUNTIME_FIELDS = {
    "supportedModelFormats", "multiModel", "disabled", "protocolVersions", "workerSpec", "containers", "volumes",
    "nodeSelector", "affinity", "tolerations", "labels", "annotations", "imagePullSecrets", "hostIPC",
    "schedulerName", "resourceClaims", "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "replicas",
    "storageHelper", "builtInAdapter",
}
MODEL_FORMAT_FIELDS = {"name": str, "version": str, "autoSelect": bool, "priority": int}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}  # pkg/constants/constants.go InferenceServiceProtocol


def servingruntime_errors(doc: dict) -> list[str]:
    import kubernetes_validate

    errors = []
    if doc["apiVersion"] != "serving.kserve.io/v1alpha1":
        errors.append(f"apiVersion {doc['apiVersion']}")
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"}:
        errors.append(f"unknown top-level keys {set(doc) - {'apiVersion', 'kind', 'metadata', 'spec'}}")
    spec = doc["spec"]
    errors += [f"spec.{k}: unknown field" for k in sorted(set(spec) - SERVING_RUNTIME_FIELDS)]
    if not spec.get("containers"):
        errors.append("spec.containers: required (validate:\"required\")")
    for i, fmt in enumerate(spec.get("supportedModelFormats") or []):
        for key, value in fmt.items():
            if key not in MODEL_FORMAT_FIELDS or not isinstance(value, MODEL_FORMAT_FIELDS[key]):
                errors.append(f"spec.supportedModelFormats[{i}].{key}: {value!r}")
    errors += [f"spec.protocolVersions: {p!r}" for p in spec.get("protocolVersions") or [] if p not in PROTOCOLS]
    pod_part = {k: spec[k] for k in ("containers", "volumes", "nodeSelector", "affinity", "tolerations",
                                      "imagePullSecrets", "schedulerName") if k in spec}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "servingruntime"}, "spec": pod_part}
    try:
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        errors.append(f"pod part: {exc.message} at {list(exc.path)}")
    return errors


def crd_errors(doc: dict) -> list[str]:
    from sentimentops.workflows.checks.schema_check import SOURCES, manifest_errors

    if (doc["apiVersion"], doc["kind"]) in SOURCES:
        return manifest_errors(doc)
    if doc["kind"] == "ServingRuntime":
        return servingruntime_errors(doc)
    return [f"no strict schema for {doc['apiVersion']} {doc['kind']}"]


def test_every_document_passes_strict_validation(rendered):
    import kubernetes_validate

    _, docs = rendered
    problems = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith(CRD_GROUPS):
            problems += [f"{name}: {e}" for e in crd_errors(doc)]
        else:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{name}: {exc.message} at {list(exc.path)}")
        if doc["kind"] not in {"ClusterWorkflowTemplate"}:
            assert doc["metadata"].get("namespace") == NAMESPACE, name
    assert problems == []
    kinds = {d["kind"] for d in docs}
    assert {"WorkflowTemplate", "CronWorkflow", "EventSource", "Sensor", "EventBus", "ConfigMap", "ServingRuntime",
            "InferenceService"} <= kinds


def test_a_one_server_event_bus_asks_for_one_stream_replica(chart):
    """Unclustered (one server) JetStream refuses a stream with more replicas than servers, and Argo Events' controller
    config (argo-helm) asks for 3: a one-replica bus (kind) must say 1 in its own streamConfig, a cluster of 3 not."""
    single = one(render(chart, {"eventBus": {"jetstream": {"replicas": 1}}}), "EventBus")
    assert yaml.safe_load(single["spec"]["jetstream"]["streamConfig"]) == {"replicas": 1}
    assert crd_errors(single) == []
    assert "streamConfig" not in one(render(chart, {"eventBus": {"jetstream": {"replicas": 3}}}), "EventBus")["spec"][
        "jetstream"]


def test_the_strict_checks_reject_a_misspelled_field(rendered):
    # The checks above would pass anything if they were not strict: each one rejects an unknown field.
    _, docs = rendered
    bus = copy.deepcopy(one(docs, "EventBus"))
    bus["spec"]["jetstream"]["replica"] = 3
    assert crd_errors(bus)
    runtime = copy.deepcopy(one(docs, "ServingRuntime"))
    runtime["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert crd_errors(runtime)
    runtime = copy.deepcopy(one(docs, "ServingRuntime"))
    runtime["spec"]["supportedModelFormat"] = []
    assert crd_errors(runtime)


# ---- the Argo documents: the rendered files, with exactly the chart-owned fields changed -----------------------

# Contract 3: parameter -> the value the chart sets (values keys; see templates/workflows.yaml).
def chart_parameters(values: dict, namespace: str = NAMESPACE) -> dict[str, str]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    v = merged(defaults, values)
    appversion = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    dest = v["mlflow"]["artifactsDestination"]
    root = dest if dest.startswith("gs://") else ("pvc://mlflow-artifacts" if v["mlflow"]["enabled"] else "")
    mlflow = (f"http://mlflow.{namespace}.svc.cluster.local:5000" if v["mlflow"]["enabled"]
              else v["mlflow"]["externalUri"])
    return {
        "image-registry": v["image"]["registry"], "image-tag": v["image"]["tag"] or appversion,
        "mlflow-tracking-uri": mlflow, "mlflow-artifacts-destination": root, "dvc-remote": v["dvc"]["remote"],
        "prometheus-url": v["monitoring"]["prometheus"]["url"], "inference-service": v["inferenceService"]["name"],
        "argo-ui-url": v["argo"]["uiUrl"], "production-store": v["production"]["store"],
    }


def merged(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _rename(node, accounts: dict, secrets: dict) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "serviceAccountName" and isinstance(value, str):
                node[key] = accounts.get(value, value)
            elif key in ("secretKeyRef", "authSecret") and isinstance(value, dict) and "name" in value:
                value["name"] = secrets.get(value["name"], value["name"])
            else:
                _rename(value, accounts, secrets)
    elif isinstance(node, list):
        for item in node:
            _rename(item, accounts, secrets)


def expected_argo_document(src: dict, values: dict) -> dict:
    """What the chart must make of one rendered document (contracts 3 and 4), in Python."""
    v = merged(yaml.safe_load((CHART / "values.yaml").read_text()), values)
    doc = copy.deepcopy(src)
    if doc["kind"] in {"WorkflowTemplate", "ClusterWorkflowTemplate"}:
        params = chart_parameters(values)
        for p in doc["spec"].get("arguments", {}).get("parameters", []):
            if p["name"] in params:
                p["value"] = params[p["name"]]
    sa = v["serviceAccounts"]
    _rename(doc, {"sentimentops-training": sa["training"]["name"], "sentimentops-pipeline": sa["pipeline"]["name"],
                  "sentiment-retrain-sensor": sa["sensor"]["name"]},
            {"sentiment-alertmanager-slack": v["secrets"]["alertmanagerSlack"]["existingSecret"]
             or "sentiment-alertmanager-slack",
             "sentiment-retrain-webhook": v["secrets"]["retrainWebhook"]["existingSecret"]
             or "sentiment-retrain-webhook"})
    return doc


def source_documents() -> list[dict]:
    docs = [d for src in sorted(RENDERED.glob("*.yaml")) for d in yaml.safe_load_all(src.read_text()) if d]
    assert docs, "charts/sentimentops/files/workflows/ is empty"
    return docs


def _without_chart_metadata(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    meta = doc["metadata"]
    meta.pop("namespace", None)
    for key in ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"):
        meta.get("labels", {}).pop(key, None)
    return doc


def test_argo_documents_are_the_rendered_files_with_only_chart_fields_set(rendered):
    name, docs = rendered
    values = load_values(name)
    argo = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["apiVersion"].startswith("argoproj.io/")
            and d["kind"] != "EventBus"}
    sources = source_documents()
    assert set(argo) == {(d["kind"], d["metadata"]["name"]) for d in sources}
    for src in sources:
        got = argo[(src["kind"], src["metadata"]["name"])]
        assert _without_chart_metadata(got) == expected_argo_document(src, values), src["metadata"]["name"]
        assert got["metadata"]["labels"]["app.kubernetes.io/instance"] == "sentimentops"
        # The rendered version label is kept (the package version; the chart's appVersion is the same).
        assert got["metadata"]["labels"]["app.kubernetes.io/version"] == src["metadata"]["labels"][
            "app.kubernetes.io/version"]


def test_the_chart_reads_the_argo_files_from_a_clone(tmp_path):
    # The chart renders straight from its files/ (no copy step); a file added there is picked up as it is.
    bare = make_chart(tmp_path)
    for f in (bare / "files" / "workflows").glob("*.yaml"):
        f.unlink()
    assert not [d for d in render(bare) if d["apiVersion"].startswith("argoproj.io/") and d["kind"] != "EventBus"]
    extra = {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
             "metadata": {"name": "extra", "labels": {"app.kubernetes.io/version": "0.1.0"}},
             "spec": {"entrypoint": "main", "serviceAccountName": "sentimentops-pipeline",
                      "arguments": {"parameters": [{"name": "image-registry", "value": ""},
                                                   {"name": "other", "value": "kept"}]},
                      "templates": [{"name": "main", "container": {"image": "x"}}]}}
    (bare / "files" / "workflows" / "extra.yaml").write_text("# generated\n" + yaml.safe_dump(extra))
    got = by_kind(render(bare, {"image": {"registry": "registry.example.com/acme"},
                                "serviceAccounts": {"pipeline": {"name": "acme-pipeline"}}}), "WorkflowTemplate")
    params = {p["name"]: p["value"] for p in got["extra"]["spec"]["arguments"]["parameters"]}
    assert params == {"image-registry": "registry.example.com/acme", "other": "kept"}  # declared ones only
    assert got["extra"]["spec"]["serviceAccountName"] == "acme-pipeline"
    (bare / "files" / "workflows" / "broken.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(helm.HelmError, match="broken.yaml is not valid YAML"):
        render(bare)


def test_workflow_kinds_filter(chart):
    docs = render(chart, {"workflows": {"kinds": ["WorkflowTemplate", "CronWorkflow"]}})
    assert {d["kind"] for d in docs if d["apiVersion"].startswith("argoproj.io/")} == {"WorkflowTemplate",
                                                                                      "CronWorkflow"}
    assert "sentiment-retrain-sensor" not in by_kind(docs, "Role")
    assert "sentiment-retrain-sensor" not in by_kind(docs, "ServiceAccount")
    off = render(chart, {"workflows": {"enabled": False}})
    assert not [d for d in off if d["apiVersion"].startswith("argoproj.io/")]
    assert "artifact-repositories" not in by_kind(off, "ConfigMap")


# ---- monitoring -------------------------------------------------------------------------------------------------

def test_monitoring_files_are_picked_up_whatever_exists(tmp_path):
    bare = make_chart(tmp_path / "before")
    shutil.rmtree(bare / "files" / "monitoring")
    before = render(bare)
    assert not by_kind(before, "PrometheusRule")
    assert not [n for n in by_kind(before, "ConfigMap") if n.startswith("sentimentops-dashboard-")]

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
    files = sorted((CHART / "files" / "monitoring" / "rules").glob("*.yaml"))
    rules = by_kind(docs, "PrometheusRule")
    assert len(rules) == len(files)
    base = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["runbookBaseUrl"]
    for f in files:
        name = "sentimentops-" + f.stem.lower().replace("_", "-")
        groups = yaml.safe_load(f.read_text())["groups"]
        # The one change the chart makes: a relative runbook link becomes absolute under monitoring.runbookBaseUrl.
        for rule in (r for g in groups for r in g["rules"]):
            link = rule.get("annotations", {}).get("runbook_url")
            if link:
                assert link.startswith("docs/runbook.md#"), f"{f.name}: {rule.get('alert')}: {link}"
                rule["annotations"]["runbook_url"] = f"{base}/{link}"
        assert rules[name]["spec"]["groups"] == groups
        assert all(r["annotations"]["runbook_url"].startswith("https://")
                   for g in rules[name]["spec"]["groups"] for r in g["rules"] if "runbook_url" in r.get("annotations", {}))


# ---- serving ------------------------------------------------------------------------------------------------------

def test_inference_service_modes(chart):
    default = by_kind(render(chart, load_values("default")), "InferenceService")["sentiment"]
    assert default["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    gke = by_kind(render(chart, load_values("gke")), "InferenceService")["sentiment"]
    assert gke["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert gke["metadata"]["annotations"]["autoscaling.knative.dev/metric"] == "concurrency"
    assert gke["spec"]["predictor"]["serviceAccountName"] == "sentimentops-serving"
    for isvc in (default, gke):
        # The canary share is the rollout's alone: the chart never renders it (test_chart_upgrade.py).
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"] and "canary" not in isvc["spec"]
    with pytest.raises(helm.HelmValuesError, match="canaryTrafficPercent"):
        render(chart, {"inferenceService": {"canaryTrafficPercent": 10}})


def test_no_inference_service_without_a_model(chart):
    docs = render(chart)
    assert "sentiment" not in by_kind(docs, "InferenceService")
    assert "sentimentops" in by_kind(docs, "ServingRuntime")  # the runtime is there for the first model
    notes = render_text(chart)[NOTES]
    assert "no InferenceService yet" in notes and "-p rollout=skip" in notes
    with pytest.raises(helm.HelmValuesError, match="storageUri"):
        render(chart, {"inferenceService": {"storageUri": "/mnt/models"}})


def test_service_accounts_carry_workload_identity_on_gke_only(chart):
    gke_values = load_values("gke")["serviceAccounts"]
    for name in VALUES:
        sas = by_kind(render(chart, load_values(name)), "ServiceAccount")
        assert set(sas) == {"sentimentops-training", "sentimentops-serving", "sentimentops-pipeline",
                            "sentimentops-mlflow", "sentiment-retrain-sensor"}
        assert "annotations" not in sas["sentiment-retrain-sensor"]["metadata"]  # no Google identity needed
        for role, spec in gke_values.items():
            annotations = sas[spec["name"]]["metadata"].get("annotations") or {}
            expected = ({"iam.gke.io/gcp-service-account": spec["gcpServiceAccount"]}
                        if name == "gke" and spec["gcpServiceAccount"] else {})
            assert annotations == expected, (name, role)
        assert sas["sentimentops-serving"]["automountServiceAccountToken"] is False
        assert sas["sentiment-retrain-sensor"]["automountServiceAccountToken"] is True


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


def test_the_chart_grants_no_deploy_identity(rendered, chart):
    # The identity that runs `helm upgrade` is created outside the chart (terraform): no Role here lets anyone
    # write the chart's own kinds, and no binding names a User.
    _, docs = rendered
    for role in by_kind(docs, "Role").values():
        for rule in role["rules"]:
            writes = set(rule["verbs"]) & {"update", "patch", "create"}
            assert not (writes and set(rule["resources"]) & {"workflowtemplates", "cronworkflows", "roles",
                                                             "rolebindings", "secrets", "configmaps"}), role
    for binding in by_kind(docs, "RoleBinding").values():
        assert all(s["kind"] == "ServiceAccount" for s in binding["subjects"]), binding["metadata"]["name"]
    with pytest.raises(helm.HelmValuesError, match="deployer"):
        render(chart, {"rbac": {"deployer": "so-ci@project-x.iam.gserviceaccount.com"}})


def test_pods_run_restricted(rendered):
    _, docs = rendered
    pod_specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    isvc = one(docs, "InferenceService")["spec"]["predictor"]
    runtime = one(docs, "ServingRuntime")["spec"]
    # KServe takes the pod securityContext from the predictor and the containers from the runtime.
    pod_specs.append({"securityContext": isvc["securityContext"], "containers": runtime["containers"]})
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


def test_mlflow_service_matches_the_workflows_tracking_uri(rendered):
    name, docs = rendered
    svc = by_kind(docs, "Service")["mlflow"]
    assert svc["spec"]["ports"][0]["port"] == 5000
    uri = chart_parameters(load_values(name))["mlflow-tracking-uri"]
    assert uri == f"http://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    monitor = by_kind(docs, "ServiceMonitor")["sentiment"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("bad, message", [
    ({"inferenceService": {"deploymentMode": "Knative"}}, "deploymentMode"),
    ({"serviceAccounts": {"serving": {"gcpServiceAccount": "me@gmail.com"}}}, "gcpServiceAccount"),
    ({"image": {"tag": "has space"}}, "tag"),
    ({"postgres": {"image": "postgres:latest"}}, "image"),
    ({"eventBus": {"jetstream": {"replicas": 2}}}, "replicas"),
    ({"eventBus": {"jetstream": {"version": "latest"}}}, "version"),
    ({"argo": {"artifactRepository": {"type": "gcs"}}}, "bucket"),
    ({"argo": {"uiUrl": "argo.example.com"}}, "uiUrl"),
    ({"dvc": {"remote": "relative/path"}}, "remote"),
    ({"drift": {"webhookUrl": "http://x"}}, "webhookUrl"),
])
def test_values_schema_rejects_mistakes(chart, bad, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        render(chart, bad)


@pytest.mark.parametrize("values_name", VALUES)
def test_helm_lint_strict(chart, values_name):
    for values in (load_values(values_name), {} if values_name == "default" else
                   yaml.safe_load((CHART / "values-gke.yaml").read_text())):
        result = helm.lint(chart, values, strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION)
        assert result["errors"] == []
        assert [m for m in result["messages"] if m["severity"] > 1] == [], result["messages"]


def test_chart_metadata_names_nothing_that_does_not_exist():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert "icon" not in meta  # an icon URL must resolve; the repository has none
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert meta["appVersion"] == version  # the default image tag and the templates' version label


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

def _runtime_containers(docs: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in one(docs, "ServingRuntime")["spec"]["containers"]}


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
    rules = (CHART / "files" / "monitoring" / "rules" / "sentiment-recording.yaml").read_text()
    assert 'role="canary"' in rules and "model_version" in rules
    svc = by_kind(docs, "Service")["sentiment-metrics"]
    assert svc["spec"]["selector"] == {"serving.kserve.io/inferenceservice": "sentiment"}
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"metrics": 8080, "drift-metrics": 9108}


def test_predictor_labels_and_the_version_it_reports_are_one(chart):
    from sentimentops.steps.rollout.kserve import ROLE_LABEL, VERSION_LABEL, served_version

    docs = render(chart, {"inferenceService": {"storageUri": MODEL["storageUri"]}})
    assert one(docs, "InferenceService")["spec"]["predictor"]["labels"] == {ROLE_LABEL: "stable"}  # no empty label
    docs = render(chart, load_values("default"))
    predictor = one(docs, "InferenceService")["spec"]["predictor"]
    assert predictor["labels"] == {ROLE_LABEL: "stable", VERSION_LABEL: "3"}
    assert served_version(predictor) == ("3", MODEL["storageUri"])
    env = {e["name"]: e for e in _runtime_containers(docs)["kserve-container"]["env"]}
    # The served version is read from the pod label the rollout writes (downward API), never a second copy.
    assert env["SENTIMENTOPS_MODEL_VERSION"] == {"name": "SENTIMENTOPS_MODEL_VERSION", "valueFrom": {
        "fieldRef": {"fieldPath": f"metadata.labels['{VERSION_LABEL}']"}}}
    with pytest.raises(helm.HelmValuesError, match="modelVersion"):
        render(chart, {"inferenceService": {"modelVersion": "v3"}})


def test_drift_monitor_sidecar_reads_the_predictors_records_and_reference(rendered):
    _, docs = rendered
    containers = _runtime_containers(docs)
    assert list(containers) == ["kserve-container", "drift-monitor"]  # the model server stays first
    server, drift = containers["kserve-container"], containers["drift-monitor"]
    records = server["args"][server["args"].index("--prediction-log") + 1]
    flags = _drift_flags(drift)
    assert drift["command"] == ["sh", "-c"] and "sentimentops drift watch \"$@\"" in drift["args"][0]
    assert flags == {"--records": records, "--reference": str(Path(records).parent / "drift_reference.json"),
                     "--host": "0.0.0.0", "--port": "9108", "--window": "500", "--window-seconds": "300",
                     "--min-window": "200", "--threshold": "0.2"}
    # Every flag is one `sentimentops drift watch` accepts.
    helptext = subprocess.run([str(REPO / ".venv" / "bin" / "sentimentops"), "drift", "watch", "--help"],
                              check=True, capture_output=True, text=True, timeout=120).stdout
    assert all(f in helptext for f in flags), flags
    # Knative (Serverless on GKE) allows ports on one container only: the sidecar declares none.
    assert "ports" not in drift and server["ports"][0]["containerPort"] == 8080
    volumes = {v["name"]: v for v in one(docs, "ServingRuntime")["spec"]["volumes"]}
    mounts = {m["name"]: m for m in drift["volumeMounts"]}
    assert {m["name"]: m["mountPath"] for m in server["volumeMounts"]}["predictions"] == str(Path(records).parent)
    assert mounts["predictions"]["readOnly"] is True and "emptyDir" in volumes["predictions"]
    assert set(mounts) == {"predictions", "drift-tmp"}  # nothing of KServe's storage volume
    assert drift["image"] == server["image"]


def test_drift_monitor_can_be_switched_off(chart):
    off = render(chart, {"drift": {"enabled": False}, "inferenceService": MODEL})
    assert list(_runtime_containers(off)) == ["kserve-container"]
    assert [e["port"] for e in by_kind(off, "ServiceMonitor")["sentiment"]["spec"]["endpoints"]] == ["metrics"]


def test_retrain_sensor_may_only_submit_from_the_charts_templates(rendered):
    _, docs = rendered
    sensor = one(docs, "Sensor")
    account = sensor["spec"]["template"]["serviceAccountName"]
    assert account == "sentiment-retrain-sensor" and account in by_kind(docs, "ServiceAccount")
    templates = sorted(by_kind(docs, "WorkflowTemplate"))
    role = by_kind(docs, "Role")[account]
    assert role["rules"] == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["create", "list"]},
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtemplates"], "resourceNames": templates,
         "verbs": ["get"]},
    ]
    binding = by_kind(docs, "RoleBinding")[account]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    # What the trigger submits is a Workflow (in the Sensor's namespace) from a template this chart installs.
    resource = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]["source"]["resource"]
    assert resource["kind"] == "Workflow" and "namespace" not in resource["metadata"]
    assert resource["spec"]["workflowTemplateRef"]["name"] in templates


def test_service_account_and_secret_names_follow_values(chart):
    values = {"serviceAccounts": {"training": {"name": "acme-train"}, "pipeline": {"name": "acme-pipe"},
                                  "sensor": {"name": "acme-sensor"}},
              "secrets": {"retrainWebhook": {"existingSecret": "acme-token"},
                          "alertmanagerSlack": {"existingSecret": "acme-slack"}}}
    docs = render(chart, values)
    names = json.dumps([d for d in docs if d["apiVersion"].startswith("argoproj.io/")])
    for default in ("sentimentops-training", "sentimentops-pipeline", "sentiment-retrain-sensor",
                    "sentiment-retrain-webhook", "sentiment-alertmanager-slack"):
        assert f'"{default}"' not in names, default
    sources = {d["kind"]: d for d in source_documents()}
    for kind in ("WorkflowTemplate", "Sensor", "EventSource"):
        assert kind in sources
    eventsource = one(docs, "EventSource")
    assert [w["authSecret"]["name"] for w in eventsource["spec"]["webhook"].values()] == ["acme-token"]
    assert one(docs, "Sensor")["spec"]["template"]["serviceAccountName"] == "acme-sensor"
    assert {"acme-train", "acme-pipe", "acme-sensor"} <= set(by_kind(docs, "ServiceAccount"))
    assert by_kind(docs, "RoleBinding")["acme-sensor"]["subjects"][0]["name"] == "acme-sensor"
    for wt in by_kind(docs, "WorkflowTemplate").values():
        assert wt["spec"]["serviceAccountName"] in {"acme-train", "acme-pipe"}
        for t in wt["spec"]["templates"]:
            assert t.get("serviceAccountName", "acme-pipe") in {"acme-train", "acme-pipe"}, t["name"]
            for env in (t.get("container") or {}).get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in {"acme-token", "acme-slack"}, (t["name"], ref)


def test_secrets_come_only_from_values(chart, rendered):
    _, docs = rendered
    assert not {"sentiment-retrain-webhook", "sentiment-alertmanager-slack"} & set(by_kind(docs, "Secret"))
    eventsource = one(docs, "EventSource")
    assert eventsource["spec"]["webhook"]["drift"]["authSecret"] == {"key": "token", "name": "sentiment-retrain-webhook"}
    alertmanager = (CHART / "files" / "monitoring" / "alertmanager" / "alertmanager.yaml").read_text()
    assert "/etc/alertmanager/secrets/sentiment-alertmanager-slack/webhook-url" in alertmanager

    import base64

    given = render(chart, {"secrets": {"retrainWebhook": {"token": "t0ken\n"},
                                       "alertmanagerSlack": {"webhookUrl": "https://hooks.slack.com/services/X/Y/Z"}}})
    secrets = by_kind(given, "Secret")
    assert base64.b64decode(secrets["sentiment-retrain-webhook"]["data"]["token"]) == b"t0ken"
    assert base64.b64decode(secrets["sentiment-alertmanager-slack"]["data"]["webhook-url"]) \
        == b"https://hooks.slack.com/services/X/Y/Z"
    existing = render(chart, {"secrets": {"retrainWebhook": {"existingSecret": "sentiment-retrain-webhook"}}})
    assert "sentiment-retrain-webhook" not in by_kind(existing, "Secret")
    with pytest.raises(helm.HelmError, match="alertmanager"):
        render(chart, {"monitoring": {"alertmanager": {"enabled": True}},
                       "secrets": {"alertmanagerSlack": {"existingSecret": "my-slack"}}})
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"secrets": {"retrainWebhook": {"existingSecret": "a", "token": "b"}}})
    with pytest.raises(helm.HelmValuesError, match="webhookUrl"):
        render(chart, {"secrets": {"alertmanagerSlack": {"webhookUrl": "http://example.com/x"}}})
    # No secret value has a default anywhere in the chart (a values file may only name an existing Secret).
    for values in (CHART / "values.yaml", CHART / "values-gke.yaml"):
        secrets_values = (yaml.safe_load(values.read_text()) or {}).get("secrets", {})
        assert all(v == "" for s in secrets_values.values() for k, v in s.items() if k != "existingSecret"), values


def test_prometheus_url_reaches_every_template_that_declares_it(chart):
    # The rendered YAML's neutral default and the chart's default are the same URL (contract 3), and a different
    # value reaches every WorkflowTemplate that has the parameter.
    values_url = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["prometheus"]["url"]
    declared = [p for d in source_documents() if d["kind"] == "WorkflowTemplate"
                for p in d["spec"].get("arguments", {}).get("parameters", []) if p["name"] == "prometheus-url"]
    assert declared, "no WorkflowTemplate declares prometheus-url"
    assert {p["value"] for p in declared} == {values_url}
    other = "http://prometheus.observability.svc:9090"
    docs = render(chart, {"monitoring": {"prometheus": {"url": other}}})
    got = [p["value"] for d in by_kind(docs, "WorkflowTemplate").values()
           for p in d["spec"]["arguments"]["parameters"] if p["name"] == "prometheus-url"]
    assert got and set(got) == {other}
    assert yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["serviceMonitor"]["labels"] \
        == {"release": "kube-prometheus-stack"}
