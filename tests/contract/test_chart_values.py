"""Values reach every document the chart renders: another registry, project and bucket change every image and every
location in every WorkflowTemplate (and nothing of the defaults is left anywhere); the Argo plumbing (the
namespace's default artifact repository, the EventBus); the KServe shape (ServingRuntime + predictor.model);
NOTES.txt; and no project id, bucket or registry written in the chart outside its values files."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from tests.contract.test_chart import (
    CHART,
    NAMESPACE,
    NOTES,
    argo_schema_errors,
    by_kind,
    chart,
    chart_parameters,
    load_values,
    one,
    render,
    render_text,
)

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
__all__ = ["chart"]  # the module-scoped chart fixture of test_chart.py, shared

# Another project: every project-specific value of values-gke.yaml replaced, as an operator does from terraform's
# outputs, plus the other locations the chart passes on.
ACME = "acme-prod"
REGISTRY = f"registry.example.com/{ACME}/images"
TAG = "9.9.9"
OTHER = {
    "image": {"registry": REGISTRY, "tag": TAG},
    "serviceAccounts": {role: {"gcpServiceAccount": f"so-{role}@{ACME}.iam.gserviceaccount.com"}
                        for role in ("training", "serving", "pipeline", "mlflow")},
    "argo": {"uiUrl": "https://argo.acme.example", "artifactRepository": {"gcs": {"bucket": f"{ACME}-argo"}}},
    "dvc": {"remote": f"gs://{ACME}-dvc/remote"},
    "production": {"store": f"gs://{ACME}-production"},
    "mlflow": {"artifactsDestination": f"gs://{ACME}-mlflow/artifacts",
               "cloudSql": {"instanceConnectionName": f"{ACME}:us-east1:reviews-mlflow"}},
    "monitoring": {"prometheus": {"url": "http://prometheus.observability.svc:9090"},
                   "runbookBaseUrl": "https://git.acme.example/ml/sentimentops/blob/main"},
    "inferenceService": {"name": "reviews", "storageUri": f"gs://{ACME}-mlflow/artifacts/1/models/m-7/artifacts",
                         "modelVersion": "7"},
}
# What must not survive anywhere once OTHER is set: the placeholders and defaults of the values files, and the
# project id the templates once carried (registry path and bucket names of a project called `sentimentops`).
FORBIDDEN = ("your-project-id", "docker.pkg.dev", "localhost/sentimentops", "gs://sentimentops",
             "/sentimentops/sentimentops", "prometheus-operated")
PARAM = re.compile(r"\{\{\s*workflow\.parameters\.([A-Za-z0-9_-]+)\s*\}\}")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


@pytest.fixture(scope="module")
def other_values() -> dict:
    return deep_merge(load_values("gke"), OTHER)


@pytest.fixture(scope="module")
def other(chart, other_values) -> list[dict]:
    return render(chart, other_values)


def test_another_project_reaches_every_parameter_the_templates_declare(other, other_values):
    expected = chart_parameters(other_values)
    assert expected["image-registry"] == REGISTRY and expected["mlflow-artifacts-destination"] == f"gs://{ACME}-mlflow/artifacts"
    templates = by_kind(other, "WorkflowTemplate")
    assert templates
    declared = set()
    for name, wt in templates.items():
        for p in wt["spec"]["arguments"]["parameters"]:
            if p["name"] in expected:
                declared.add(p["name"])
                assert p["value"] == expected[p["name"]], (name, p["name"])
    # Every template needs the registry and tag; the other locations are declared by one template or another.
    assert {"image-registry", "image-tag"} <= declared


def resolved_images(templates: dict[str, dict]) -> list[tuple[str, str]]:
    """Every container image each WorkflowTemplate runs, as Argo resolves it from the entrypoint and the exit
    handler: `{{workflow.parameters.X}}` from the submitted workflow's defaults (also the entrypoint's inputs), `{{inputs.parameters.X}}` from the
    calling task's arguments (or the input's own default), through DAG/steps and templateRef (a referenced
    template runs in the CALLER's workflow, so its workflow.parameters are the caller's)."""
    found: list[tuple[str, str]] = []

    def subst(text: str, inputs: dict, wf: dict) -> str:
        text = re.sub(r"\{\{\s*inputs\.parameters\.([A-Za-z0-9_-]+)\s*\}\}", lambda m: inputs[m.group(1)], text)
        return PARAM.sub(lambda m: wf[m.group(1)], text)

    def run(wt: dict, name: str, args: dict, wf: dict, trail: str) -> None:
        t = next(t for t in wt["spec"]["templates"] if t["name"] == name)
        inputs = {p["name"]: args[p["name"]] if p["name"] in args else subst(p["value"], {}, wf)
                  for p in (t.get("inputs") or {}).get("parameters", [])}
        for c in [t.get("container"), t.get("script")] + t.get("initContainers", []) + t.get("sidecars", []):
            if c:
                found.append((f"{trail}/{name}", subst(c["image"], inputs, wf)))
        tasks = (t.get("dag") or {}).get("tasks", []) + [s for group in t.get("steps") or [] for s in group]
        for task in tasks:
            targs = {p["name"]: subst(str(p["value"]), inputs, wf)
                     for p in (task.get("arguments") or {}).get("parameters", [])}
            if "templateRef" in task:
                ref = task["templateRef"]
                run(templates[ref["name"]], ref["template"], targs, wf, f"{trail}/{name}->{ref['name']}")
            else:
                run(wt, task["template"], targs, wf, f"{trail}/{name}")

    for wt_name, wt in templates.items():
        wf = {p["name"]: str(p.get("value", "")) for p in wt["spec"]["arguments"]["parameters"]}
        # Argo fills the entrypoint's inputs from the workflow's arguments by name.
        run(wt, wt["spec"]["entrypoint"], wf, wf, wt_name)
        if wt["spec"].get("onExit"):
            run(wt, wt["spec"]["onExit"], {}, wf, wt_name)
    return found


def test_another_registry_and_tag_reach_every_image(other):
    templates = by_kind(other, "WorkflowTemplate")
    images = resolved_images(templates)
    # Every container template of every WorkflowTemplate is reached from an entrypoint or exit handler.
    containers = {t["name"] for wt in templates.values() for t in wt["spec"]["templates"] if t.get("container")}
    assert {w.rsplit("/", 1)[1] for w, _ in images} >= containers
    for kind in ("Deployment", "StatefulSet"):
        for d in by_kind(other, kind).values():
            images += [(d["metadata"]["name"], c["image"]) for c in d["spec"]["template"]["spec"]["containers"]]
    images += [("ServingRuntime", c["image"]) for c in one(other, "ServingRuntime")["spec"]["containers"]]
    assert len(images) >= 10
    for where, image in images:
        assert re.fullmatch(rf"{re.escape(REGISTRY)}/sentimentops-[a-z]+:{re.escape(TAG)}", image), (where, image)


def test_nothing_of_the_defaults_is_left_in_any_document(other):
    argo = [d for d in other if d["apiVersion"].startswith("argoproj.io/")]
    assert {d["kind"] for d in argo} >= {"WorkflowTemplate", "CronWorkflow", "EventSource", "Sensor", "EventBus"}
    for doc in other:
        for s in strings(doc):
            for old in FORBIDDEN:
                assert old not in s, (doc["kind"], doc["metadata"]["name"], old, s[:200])
            # Every bucket and Google account named anywhere is the other project's.
            for bucket in re.findall(r"gs://([a-z0-9._-]+)", s):
                assert bucket.startswith(f"{ACME}-") or bucket == "bucket", (doc["kind"], bucket)  # or the example
            for account in re.findall(r"@([a-z0-9-]+)\.iam\.gserviceaccount\.com", s):
                assert account == ACME, (doc["kind"], account)
            # ... and so is every IAM database user (MLflow's Cloud SQL login) and Cloud SQL instance.
            for account in re.findall(r"%40([a-z0-9-]+)\.iam@", s) + re.findall(r"^([a-z0-9-]+):[a-z]+-[a-z]+\d:", s):
                assert account == ACME, (doc["kind"], account)


def test_the_image_tag_defaults_to_the_charts_app_version(chart):
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    docs = render(chart, load_values("default"))
    assert {c["image"].rsplit(":", 1)[1] for c in one(docs, "ServingRuntime")["spec"]["containers"]} == {app_version}
    for wt in by_kind(docs, "WorkflowTemplate").values():
        tags = [p["value"] for p in wt["spec"]["arguments"]["parameters"] if p["name"] == "image-tag"]
        assert tags == [app_version], wt["metadata"]["name"]


# ---- Argo plumbing ------------------------------------------------------------------------------------------------

def _repository(docs: list[dict]) -> tuple[dict, dict]:
    cm = by_kind(docs, "ConfigMap")["artifact-repositories"]
    key = cm["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"]
    return cm, yaml.safe_load(cm["data"][key])


def test_the_namespace_default_artifact_repository(chart, other):
    cm, kind_repo = _repository(render(chart))
    assert cm["metadata"]["annotations"] == {"workflows.argoproj.io/default-artifact-repository": "default-v1"}
    # kind: Argo's quick-start MinIO by its full service name (a short name does not resolve from this namespace).
    assert kind_repo == {"archiveLogs": True, "s3": {
        "endpoint": "minio.argo.svc.cluster.local:9000", "bucket": "my-bucket", "insecure": True,
        "accessKeySecret": {"name": "my-minio-cred", "key": "accesskey"},
        "secretKeySecret": {"name": "my-minio-cred", "key": "secretkey"}}}
    # GKE: the terraform bucket through Workload Identity: no key Secret.
    _, gke_repo = _repository(other)
    assert gke_repo == {"archiveLogs": True, "gcs": {"bucket": f"{ACME}-argo"}}
    for repo in (kind_repo, gke_repo):
        assert argo_schema_errors("ArtifactRepository", repo) == []
    assert argo_schema_errors("ArtifactRepository", {"gcs": {"bucket": "b", "bukket": "x"}})  # strict
    # The templates name no repository: the namespace default applies to every step.
    assert not [s for d in other if d["apiVersion"].startswith("argoproj.io/") for s in strings(d)
                if s == "artifactRepositoryRef"]
    off = render(chart, {"argo": {"artifactRepository": {"create": False}}})
    assert "artifact-repositories" not in by_kind(off, "ConfigMap")


def test_the_event_bus(chart, other):
    bus = one(other, "EventBus")
    assert bus["metadata"]["name"] == "default"
    assert bus["spec"] == {"jetstream": {"version": "2.10.29", "replicas": 3}}
    # The EventSource and Sensor use the bus named `default` (eventBusName unset, or that name).
    for kind in ("EventSource", "Sensor"):
        assert one(other, kind)["spec"].get("eventBusName", "default") == "default"
    assert not by_kind(render(chart, {"eventBus": {"create": False}}), "EventBus")
    assert not by_kind(render(chart, {"workflows": {"kinds": ["WorkflowTemplate", "CronWorkflow"]}}), "EventBus")
    single = one(render(chart, {"eventBus": {"jetstream": {"replicas": 1, "version": "2.9.16"}}}), "EventBus")
    assert single["spec"]["jetstream"] == {"version": "2.9.16", "replicas": 1, "streamConfig": "replicas: 1\n"}


# ---- KServe -----------------------------------------------------------------------------------------------------

def test_serving_runtime_and_inference_service_shape(other):
    runtime = one(other, "ServingRuntime")
    isvc = one(other, "InferenceService")
    assert runtime["metadata"]["name"] == "sentimentops" and isvc["metadata"]["name"] == "reviews"
    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [{"name": "sentimentops", "version": "1", "autoSelect": True}]
    assert spec["protocolVersions"] == ["v1", "v2"]
    server = spec["containers"][0]
    assert server["name"] == "kserve-container"  # the container KServe merges predictor.model into
    assert [*server["command"], *server["args"]] == [
        "sentimentops", "serve", "--model-dir", "/mnt/models", "--model-name", "reviews", "--port", "8080",
        "--prediction-log", "/var/run/sentimentops/predictions/records.jsonl"]
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"] == {"modelFormat": {"name": "sentimentops"}, "runtime": "sentimentops",
                                  "storageUri": OTHER["inferenceService"]["storageUri"],
                                  "resources": load_values("gke").get("inferenceService", {}).get(
                                      "resources", yaml.safe_load((CHART / "values.yaml").read_text())[
                                          "inferenceService"]["resources"])}
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert predictor["model"]["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    # No containers in the InferenceService: the rollout's patches never meet the sidecar (it is the runtime's).
    assert "containers" not in predictor and "drift-monitor" in {c["name"] for c in spec["containers"]}
    assert predictor["labels"] == {"sentimentops.io/role": "stable", "sentimentops.io/model-version": "7"}
    # The metrics Service selects the InferenceService's pods by KServe's label.
    assert by_kind(other, "Service")["reviews-metrics"]["spec"]["selector"] == {
        "serving.kserve.io/inferenceservice": "reviews"}


def test_no_kserve_internals_and_no_sidecar_webhook(chart):
    for values in (load_values("default"), load_values("gke")):
        text = "\n".join(v for k, v in render_text(chart, values).items() if k != NOTES)
        assert "kserve-provision-location" not in text  # KServe's internal storage volume name
        assert "--webhook" not in text  # the sidecar exports PSI only; Alertmanager is the one retrain caller


# ---- NOTES.txt and the values files -------------------------------------------------------------------------------

def test_notes_print_the_next_commands(chart, other_values, other):
    training = next(n for n, d in by_kind(other, "WorkflowTemplate").items() if d["spec"]["entrypoint"] == "pipeline")
    notes = render_text(chart, other_values)[NOTES]
    assert f"argo submit -n {NAMESPACE} --from workflowtemplate/{training} -p reason=manual" in notes
    assert f"kubectl -n {NAMESPACE} get inferenceservice reviews --watch" in notes
    assert f"https://argo.acme.example/workflows/{NAMESPACE}" in notes
    assert "WARNING" not in notes
    # values-gke.yaml as committed still carries the placeholder project: the install says which values.
    placeholder = render_text(chart, load_values("gke"))[NOTES]
    assert "WARNING" in placeholder
    for key in ("image.registry", "mlflow.artifactsDestination", "dvc.remote", "argo.artifactRepository.gcs.bucket",
                "serviceAccounts.training.gcpServiceAccount", "mlflow.cloudSql.instanceConnectionName"):
        assert f"  - {key}\n" in placeholder + "\n", key


def test_values_gke_marks_every_project_value_as_a_placeholder():
    # Each project-specific value in values-gke.yaml names the placeholder project, so NOTES can catch it.
    gke = yaml.safe_load((CHART / "values-gke.yaml").read_text())
    project_values = [gke["image"]["registry"], gke["mlflow"]["artifactsDestination"], gke["dvc"]["remote"],
                      gke["argo"]["artifactRepository"]["gcs"]["bucket"], gke["mlflow"]["cloudSql"]["instanceConnectionName"]]
    project_values += [sa["gcpServiceAccount"] for sa in gke["serviceAccounts"].values() if sa["gcpServiceAccount"]]
    assert len(project_values) == 9 and all("your-project-id" in v for v in project_values), project_values


def test_no_project_id_bucket_or_registry_outside_the_values_files():
    patterns = {"a registry host": re.compile(r"[a-z0-9-]+\.pkg\.dev|gcr\.io/[a-z]"),
                # a concrete bucket; `gs://bucket/...` is the generic example the parameter descriptions use
                "a bucket": re.compile(r"gs://(?!bucket/)[a-z0-9]"),
                "a Google service account": re.compile(r"[a-z0-9-]+@[a-z0-9-]+\.iam\.gserviceaccount\.com"),
                "the placeholder project": re.compile(r"your-project-id")}
    checked = []
    for path in sorted(CHART.rglob("*")):
        if not path.is_file() or path.name in {"values.yaml", "values-gke.yaml"}:
            continue
        text = path.read_text()
        checked.append(path)
        for what, pattern in patterns.items():
            found = pattern.search(text)
            if what == "the placeholder project" and path.name == "NOTES.txt":
                continue  # the warning that finds a placeholder left in the values
            assert not found, f"{path.relative_to(CHART)} names {what}: {found.group(0)}"
    assert any(p.parent.name == "workflows" for p in checked) and any(p.parent.name == "templates" for p in checked)
