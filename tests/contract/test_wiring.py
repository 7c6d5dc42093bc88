"""Wiring: every name that crosses a file boundary, followed from where it is used to where it is made, the way a
platform engineer reads the repository before a first `helm install`.

Schema checks (tests/contract/test_chart.py, test_schemas.py) prove each document is well formed; these tests prove
the documents fit together: the image a template runs is built and released; the ServiceAccount, Secret, ConfigMap,
EventBus, template and ServingRuntime a document names is created by the chart, by terraform, or by the operator
(docs/runbook.md's table of what an operator creates); the Google identities and buckets the GKE values name are
terraform's; the parameters a CronWorkflow, a Sensor or a `templateRef` passes are the ones the template declares;
no project id is written outside values files and terraform variables; values reach every WorkflowTemplate; the
namespace has a default artifact repository on terraform's Argo bucket; Alertmanager is the one caller of the
retraining webhook; the kind harness builds, installs and addresses what the chart needs.

Every list is derived from the files at test time (the chart rendered with helm-python-sdk for values.yaml,
values-gke.yaml, and values-gke.yaml moved to another registry, project and bucket; terraform read with
python-hcl2; release.yml's re-tag step run by bash with every cloud tool stubbed; scripts/e2e/run.sh through its own
dry run, `E2E_DRY_RUN=1`). docs/runbook.md's table of operator-created objects: a markdown table whose first header
cell says `object` (or with a `kind` column), the names in backticks in the first column, optional `kind` and
`namespace` columns. `WIRING_REPO=<path>` runs the module against another checkout (tests/contract/wiring_refs.py,
`Layout`).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import pytest
import wiring_refs as w
import yaml
from wiring_refs import LAYOUT, NAMESPACE, by_kind, doc_id, get_dotted, image_name

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
pytest.importorskip("hcl2", reason="python-hcl2 is not installed (the infra extra)")

REPO = LAYOUT.repo
CHART = LAYOUT.chart
GKE_VALUES = CHART / "values-gke.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"
E2E = REPO / "scripts" / "e2e" / "run.sh"
DEFAULT_REPO_ANNOTATION = "workflows.argoproj.io/default-artifact-repository"
# Argo reads the namespace's default artifact repository from this ConfigMap (ArtifactRepositoryRef.GetConfigMapOr:
# "The name of the config map. Defaults to artifact-repositories"), the key from the annotation above.
DEFAULT_REPO_CONFIGMAP = "artifact-repositories"
BUILTIN = {("ServiceAccount", "default"), ("ClusterRole", "view"), ("ClusterRole", "edit"), ("ClusterRole", "admin")}
WRITE_ROLES = {"roles/storage.objectUser", "roles/storage.objectAdmin", "roles/storage.objectCreator",
               "roles/storage.admin"}
# Another owner of the GKE values: a registry, project and bucket prefix nobody else uses.
OTHER = {"registry": "us-central1-docker.pkg.dev/other-proj-4821/images", "project": "other-proj-4821",
         "prefix": "other-bkt-4821"}
CUSTOM_PROMETHEUS = "http://prometheus-k8s.observability.svc.cluster.local:9090"


# ---- what the repository says ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> Path:
    return w.chart_copy(tmp_path_factory.mktemp("wiring"))


@pytest.fixture(scope="module")
def tf() -> w.Terraform:
    return w.Terraform.load(REPO / "terraform")


class Facts:
    """The project, registry and buckets values-gke.yaml names, read against terraform's naming."""

    def __init__(self, tf: w.Terraform) -> None:
        self.text = GKE_VALUES.read_text()
        self.values = yaml.safe_load(self.text) or {}
        self.registry = str(get_dotted(self.values, "image.registry") or "")
        self.project = None
        output = tf.outputs().get("image_registry")
        if output is not None:
            for _, pattern in tf.expand(str(output["value"]), output, capture={"var.project_id": "project"}):
                if m := re.fullmatch(pattern, self.registry):
                    self.project = m.groupdict().get("project")
        # terraform's buckets: (resource/for_each key, regex with the prefix captured)
        self.tf_buckets = [(key or name, pattern) for name, body in tf.resources("google_storage_bucket").items()
                           for key, pattern in tf.expand(str(body.get("name", "")), body,
                                                         capture={"local.bucket_prefix": "prefix",
                                                                  "var.project_id": "prefix"})]
        self.buckets = sorted(buckets_in(self.values))
        prefixes = {m.group("prefix") for b in self.buckets for _, p in self.tf_buckets
                    if (m := re.fullmatch(p, b)) and "prefix" in m.groupdict()}
        self.prefix = next(iter(prefixes)) if len(prefixes) == 1 else self.project
        self.argo_keys = [k for k, _ in self.tf_buckets if "argo" in str(k).lower()]

    def bucket(self, key: str, prefix: str | None = None) -> str:
        pattern = dict(self.tf_buckets)[key]
        return re.sub(r"\\-", "-", re.sub(r"\(\?P<prefix>[^)]*\)", prefix or self.prefix or "", pattern))

    def concrete_buckets(self, prefix: str | None = None) -> list[str]:
        return [self.bucket(k, prefix) for k, p in self.tf_buckets if "(?P<prefix>" in p]

    def hardcoded(self) -> list[tuple[str, re.Pattern]]:
        """The forms in which this project id, registry and these buckets would be written down elsewhere."""
        out = []
        if self.registry:
            out.append(("registry", re.compile(re.escape(self.registry))))
        if self.project:
            p = re.escape(self.project)
            out += [("registry path", re.compile(rf"docker\.pkg\.dev/{p}/")),
                    ("service account domain", re.compile(rf"{p}\.iam\.gserviceaccount\.com")),
                    ("workload identity pool", re.compile(rf"{p}\.svc\.id\.goog")),
                    ("resource path", re.compile(rf"projects/{p}/")),
                    # Cloud SQL: the instance connection name (project:region:instance) and the IAM database user
                    ("Cloud SQL connection name", re.compile(rf"(?<![\w.-]){p}:[a-z]+-[a-z]+[0-9]:")),
                    ("IAM database user", re.compile(rf"(?:@|%40){p}\.iam(?![\w.-])")),
                    ("project flag", re.compile(rf"(?:project_id|--project|GCP_PROJECT_ID)[\s=:\"']+{p}(?![\w-])"))]
        names = "|".join(re.escape(b) for b in self.concrete_buckets())
        if names:
            out.append(("bucket", re.compile(rf"(?:gs://|bucket[\"']?\s*[:=]\s*[\"']?)(?:{names})(?![\w-])")))
        return out

    def retarget(self, text: str) -> str:
        """values-gke.yaml as another owner writes it: another registry, project and bucket prefix."""
        text = text.replace(self.registry, OTHER["registry"]) if self.registry else text
        for old, new in zip(self.concrete_buckets(), self.concrete_buckets(OTHER["prefix"]), strict=True):
            text = re.sub(rf"(gs://|bucket[\"']?\s*:\s*[\"']?){re.escape(old)}(?![\w-])", rf"\g<1>{new}", text)
        if self.project:
            p = re.escape(self.project)
            for form in (r"(@){p}(\.iam\.gserviceaccount\.com)", r"()(?<![\w-]){p}(\.svc\.id\.goog)",
                         r"()(?<![\w.-]){p}(:[a-z]+-[a-z]+[0-9]:)",
                         r"(docker\.pkg\.dev/){p}(/)", r"(projects/){p}(/)"):
                text = re.sub(form.format(p=p), rf"\g<1>{OTHER['project']}\g<2>", text)
        return text


def buckets_in(node) -> set[str]:
    """Bucket names a document or values file uses (gs:// URLs, *bucket keys; descriptions are prose, skipped)."""
    out = set()
    for path, key, value in w.walk(node):
        if isinstance(value, str) and key != "description" and ".description" not in path:
            out.update(re.findall(r"gs://([a-z0-9][a-z0-9._-]*[a-z0-9])", value))
            if isinstance(key, str) and key.lower().endswith("bucket") and re.fullmatch(r"[a-z0-9][a-z0-9._-]+", value):
                out.add(value)
    return out


@pytest.fixture(scope="module")
def facts(tf) -> Facts:
    return Facts(tf)


class Renders:
    """The chart rendered for values.yaml ("default": the CPU/kind cluster), values-gke.yaml ("gke"), values-gke.yaml
    as another owner writes it ("other") and with another Prometheus ("prometheus"); each as installed once a model
    exists (inferenceService.storageUri and modelVersion set: the chart renders no InferenceService without them)."""

    def __init__(self, chart: Path, facts: Facts) -> None:
        self.chart, self.facts, self._cache = chart, facts, {}
        defaults = w.load_yaml(CHART / "values.yaml")
        bucket = (facts.buckets or ["wiring-models"])[0]
        served = {"inferenceService": {"storageUri": f"gs://{bucket}/wiring/model", "modelVersion": "1"}}
        other = yaml.safe_load(facts.retarget(facts.text)) or {}
        self.values = {
            "default": served,
            "gke": w.deep_merge(facts.values, served),
            "other": w.deep_merge(other, {"inferenceService": {"storageUri": "gs://other/wiring/model",
                                                               "modelVersion": "1"}}),
            "prometheus": w.deep_merge(facts.values, served | {"monitoring": {"prometheus": {"url": CUSTOM_PROMETHEUS}}}),
        }
        self.effective = {k: w.deep_merge(defaults, v) for k, v in self.values.items()}

    def __call__(self, name: str) -> list[dict]:
        if name not in self._cache:
            self._cache[name] = w.render(self.chart, self.values[name])
        return self._cache[name]


@pytest.fixture(scope="module")
def renders(chart, facts) -> Renders:
    return Renders(chart, facts)


@cache
def runbook_objects() -> frozenset:
    return frozenset(w.runbook_objects(RUNBOOK.read_text())) if RUNBOOK.is_file() else frozenset()


def ours(image: str, registry: str) -> bool:
    return bool(registry) and image.startswith(registry.rstrip("/") + "/") or image_name(image).startswith("sentimentops-")


def workflow_images(docs: list[dict]) -> list[tuple[str, str]]:
    graph = w.call_graph(docs)
    seen, out = set(), []
    for r in graph.reached:
        for where, image in w.container_images(r):
            if (where, image) not in seen:
                seen.add((where, image))
                out.append((f"{r.root}: {where}", image))
    return out


def subcommand(template: dict) -> list[str]:
    """`sentimentops <words>` a container template runs (command + args), or []."""
    c = template.get("container") or template.get("script") or {}
    words = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
    if "sentimentops" in words:
        words = words[words.index("sentimentops") + 1:]
        return [x for x in words[:2] if not x.startswith("-")]
    return []


# ---- images ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_every_image_is_built_by_images_yml_and_retagged_by_release(renders, values_name, tmp_path):
    docs = renders(values_name)
    registry = str(get_dotted(renders.effective[values_name], "image.registry") or "")
    built = w.images_built(yaml.safe_load((REPO / ".github" / "workflows" / "images.yml").read_text()))
    retagged, problems = w.images_retagged(yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text()),
                                           tmp_path)
    used = workflow_images(docs) + w.chart_images(docs)
    assert any(ours(i, registry) for _, i in used), f"{values_name}: no sentimentops image found in the render"
    for where, image in used:
        if "{{" in image:
            problems.append(f"{where}: image {image!r} does not resolve to a registry/name:tag")
            continue
        if not ours(image, registry):
            continue  # third-party images (postgres, ...) are pinned in values, not built here
        name = image_name(image)
        if name not in built:
            problems.append(f"{where}: {image} -> `{name}` is not built by .github/workflows/images.yml "
                            f"(it builds {sorted(built)})")
        elif not any((REPO / f).is_file() for f in built[name]):
            problems.append(f"{where}: `{name}` is built from {sorted(built[name])}, which does not exist")
        if name not in retagged:
            problems.append(f"{where}: `{name}` is not re-tagged with the version by .github/workflows/release.yml "
                            f"(it re-tags {sorted(retagged)})")
    assert problems == [], "\n".join(dict.fromkeys(problems))


# ---- names a rendered document references ------------------------------------------------------------------------

def references(docs: list[dict]) -> list[tuple[str, str, str]]:
    """(where, kind, name) of every in-namespace object a rendered document names."""
    refs: list[tuple[str, str, str]] = []

    def add(where: str, kind: str, name) -> None:
        if isinstance(name, str) and name and "{{" not in name:
            refs.append((where, kind, name))

    for doc in docs:
        did, kind, spec = doc_id(doc), doc.get("kind"), doc.get("spec") or {}
        body = doc
        if kind == "ConfigMap" and (doc["metadata"]["name"] == DEFAULT_REPO_CONFIGMAP or DEFAULT_REPO_ANNOTATION in
                                    (doc["metadata"].get("annotations") or {})):
            body = {k: (yaml.safe_load(v) if isinstance(v, str) else v) for k, v in (doc.get("data") or {}).items()}
        if kind == "Secret":
            continue
        for path, key, value in w.walk(body):
            where = f"{did} {path}"
            if key in ("serviceAccountName", "serviceAccount") and isinstance(value, str):
                add(where, "ServiceAccount", value)
            elif key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                add(where, "Secret", value.get("name"))
            elif key == "secret" and isinstance(value, dict):
                add(where, "Secret", value.get("secretName") or value.get("name"))
            elif key in ("configMapKeyRef", "configMapRef") and isinstance(value, dict) or key == "configMap" and isinstance(value, dict):
                add(where, "ConfigMap", value.get("name"))
            elif key == "persistentVolumeClaim" and isinstance(value, dict):
                add(where, "PersistentVolumeClaim", value.get("claimName"))
            elif key == "imagePullSecrets" and isinstance(value, list):
                for s in value:
                    add(where, "Secret", (s or {}).get("name"))
            elif isinstance(key, str) and key.endswith("Secret") and isinstance(value, dict) and "key" in value:
                add(where, "Secret", value.get("name"))  # Argo/Argo Events SecretKeySelector (authSecret, ...)
            elif key == "workflowTemplateRef" and isinstance(value, dict) or key == "templateRef" and isinstance(value, dict):
                add(where, "ClusterWorkflowTemplate" if value.get("clusterScope") else "WorkflowTemplate",
                    value.get("name"))
            elif key == "artifactRepositoryRef" and isinstance(value, dict):
                add(where, "ConfigMap", value.get("configMap") or DEFAULT_REPO_CONFIGMAP)
        if kind in ("EventSource", "Sensor"):
            add(f"{did} spec.eventBusName", "EventBus", spec.get("eventBusName") or "default")
        if kind == "Sensor":
            for i, dep in enumerate(spec.get("dependencies") or []):
                add(f"{did} spec.dependencies[{i}].eventSourceName", "EventSource", dep.get("eventSourceName"))
        if kind == "InferenceService":
            for comp in ("predictor", "transformer", "explainer"):
                model = (spec.get(comp) or {}).get("model") or {}
                if model.get("runtime"):
                    add(f"{did} spec.{comp}.model.runtime", "ServingRuntime", model["runtime"])
        if kind == "RoleBinding":
            add(f"{did} roleRef", doc["roleRef"]["kind"], doc["roleRef"]["name"])
            for i, s in enumerate(doc.get("subjects") or []):
                if s.get("kind") == "ServiceAccount" and s.get("namespace", NAMESPACE) == NAMESPACE:
                    add(f"{did} subjects[{i}]", "ServiceAccount", s.get("name"))
    return refs


def exists(kind: str, name: str, docs: list[dict], tf_objects: set[tuple[str, str]],
           harness_commands: list[str] = ()) -> bool:
    if (kind, name) in BUILTIN or name in by_kind(docs, kind):
        return True
    # values.yaml is the kind cluster's: there the operator is scripts/e2e/run.sh (`kubectl create <kind> NAME`,
    # or a manifest applied from a path or URL that names it).
    if any(kind.lower() in c.lower() and name in c and re.search(r"\b(create|apply)\b", c) for c in harness_commands):
        return True
    if any(k == kind and re.fullmatch(p, name) for k, p in tf_objects):
        return True
    return in_runbook(kind, name, NAMESPACE)


def in_runbook(kind: str, name: str, namespace: str) -> bool:
    return any(n == name and (k is None or k.lower() == kind.lower()) and (ns is None or ns == namespace)
               for k, n, ns in runbook_objects())


@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_every_referenced_object_is_created_by_the_chart_terraform_or_the_operator(renders, tf, values_name):
    docs = renders(values_name)
    tf_objects = tf.kubernetes_objects()
    harness = _harness() if values_name == "default" else None
    commands = harness.commands if harness else []
    also = f", not created by {E2E.relative_to(REPO)}" + (f" ({harness.error[:200]})" if harness.error else "") \
        if harness else ""
    missing = [f"{values_name}: {where} names {kind} `{name}`, which is not in the chart render, not a terraform "
               f"kubernetes_* resource{also}, and not in docs/runbook.md's table of objects an operator creates"
               + ("" if runbook_objects() else " (docs/runbook.md has no such table: a markdown table whose first "
                                                 "header cell says `object` or that has a `kind` column, names in "
                                                 "backticks in the first column)")
               for where, kind, name in references(docs) if not exists(kind, name, docs, tf_objects, commands)]
    # A ServiceMonitor that selects no Service scrapes nothing.
    services = by_kind(docs, "Service")
    for name, monitor in by_kind(docs, "ServiceMonitor").items():
        wanted = (monitor["spec"].get("selector") or {}).get("matchLabels") or {}
        if not any(wanted.items() <= (s["metadata"].get("labels") or {}).items() for s in services.values()):
            missing.append(f"{values_name}: ServiceMonitor/{name} selects labels {wanted}, which no rendered Service has")
    assert missing == [], "\n".join(dict.fromkeys(missing))


@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_in_namespace_service_urls_name_services_that_exist(renders, values_name):
    docs = renders(values_name)
    services = set(by_kind(docs, "Service"))
    services |= {f"{n}-eventsource-svc" for n in by_kind(docs, "EventSource")}  # Argo Events: "%s-eventsource-svc"
    for isvc in by_kind(docs, "InferenceService"):  # KServe's Services for an InferenceService
        services |= {isvc, f"{isvc}-predictor", f"{isvc}-predictor-default", f"{isvc}-canary"}
    texts = [(f"{r.root}: {r.name}", r.resolve(s)) for r in w.call_graph(docs).reached
             for _, s in w.strings(r.template)]
    texts += [(f"{doc_id(d)} {p}", s) for d in docs if d.get("kind") not in w.ARGO_KINDS | {"ConfigMap", "Secret"}
              for p, s in w.strings(d.get("spec") or {})]
    texts += [(f"{doc_id(d)} argument {p['name']}", str(p.get("value", ""))) for d in docs
              if d.get("kind") == "WorkflowTemplate" for p in (d["spec"].get("arguments") or {}).get("parameters") or []]
    problems = []
    for where, text in texts:
        for host in re.findall(r"https?://([a-z0-9-]+(?:\.[a-z0-9-]+)*)(?::\d+)?", text):
            parts = host.split(".")
            in_namespace = (len(parts) == 1 and "{{" not in text) or (len(parts) >= 3 and parts[2] == "svc"
                                                                    and parts[1] == NAMESPACE)
            if in_namespace and parts[0] not in services and parts[0] not in {"localhost", "127"}:
                problems.append(f"{values_name}: {where}: {text!r} names Service `{parts[0]}` in the release "
                                f"namespace, which nothing renders (Services: {sorted(services)})")
    assert problems == [], "\n".join(dict.fromkeys(problems))


# ---- Google identities, buckets and the registry ------------------------------------------------------------------

def _gsa_resource(tf: w.Terraform, account: str) -> tuple[str, str | None] | None:
    for name, body in tf.resources("google_service_account").items():
        for key, pattern in tf.expand(str(body.get("account_id", "")), body):
            if re.fullmatch(pattern, account):
                return name, key
    return None


def test_google_service_accounts_are_created_and_bound_by_terraform(renders, tf, facts):
    docs = renders("gke")
    problems = []
    emails = {(f"{doc_id(d)} {p}", m) for d in docs for p, s in w.strings(d)
              for m in re.findall(r"[a-z0-9-]+@[a-z0-9-]+\.iam\.gserviceaccount\.com", s)}
    assert emails, "gke: no Google service account is named in the render (Workload Identity annotations missing)"
    bindings = tf.resources("google_service_account_iam_member")
    for where, email in sorted(emails):
        account, project = email.split("@")[0], email.split("@")[1].split(".")[0]
        if facts.project and project != facts.project:
            problems.append(f"{where}: {email} is in project `{project}`, the registry of values-gke.yaml in "
                            f"`{facts.project}`")
        found = _gsa_resource(tf, account)
        if found is None:
            problems.append(f"{where}: {email}: no terraform google_service_account has an account_id matching "
                            f"`{account}`")
    for sa in by_kind(docs, "ServiceAccount").values():
        email = (sa["metadata"].get("annotations") or {}).get("iam.gke.io/gcp-service-account")
        if not email or (found := _gsa_resource(tf, email.split("@")[0])) is None:
            continue
        resource, key = found
        ref = rf"google_service_account\.{resource}(\[each\.key\])?\.(name|id)"
        members = [p for b in bindings.values() if b.get("role") == "roles/iam.workloadIdentityUser"
                   and re.search(ref, str(b.get("service_account_id", "")))
                   for k, p in tf.expand(str(b["member"]), b, use_defaults=True) if k == key or k is None]
        wanted = f"serviceAccount:{facts.project}.svc.id.goog[{NAMESPACE}/{sa['metadata']['name']}]"
        if not any(re.fullmatch(p, wanted) for p in members):
            problems.append(f"ServiceAccount/{sa['metadata']['name']} is annotated with {email}, but terraform's "
                            f"workloadIdentityUser binding of google_service_account.{resource}[{key}] is for "
                            f"{members or 'nobody'}, not {wanted}")
    assert problems == [], "\n".join(problems)


def test_buckets_and_registry_in_the_gke_values_are_terraforms(renders, tf, facts):
    problems = []
    output = tf.outputs().get("image_registry")
    if output is None:
        problems.append("terraform has no output `image_registry` for values-gke.yaml image.registry")
    elif facts.project is None:
        problems.append(f"values-gke.yaml image.registry {facts.registry!r} is not terraform's image_registry "
                        f"({output['value']})")
    if not facts.buckets:
        problems.append("values-gke.yaml names no bucket (gs://... or a *bucket key)")
    located = buckets_in(renders("gke")) | set(facts.buckets)
    for bucket in sorted(located):
        matches = [(k, m) for k, p in facts.tf_buckets if (m := re.fullmatch(p, bucket))]
        if not matches:
            problems.append(f"bucket `{bucket}` (values-gke.yaml or its render) is none of terraform's buckets "
                            f"{[p for _, p in facts.tf_buckets]}")
        elif facts.prefix and matches[0][1].groupdict().get("prefix") not in (None, facts.prefix):
            problems.append(f"bucket `{bucket}` has prefix `{matches[0][1].group('prefix')}`; the other buckets use "
                            f"`{facts.prefix}` (terraform names them all <bucket_prefix>-<key>)")
    assert problems == [], "\n".join(problems)


def _mlflow_proxy_and_uri(docs: list[dict]) -> tuple[str, str]:
    """(the Cloud SQL connection name the proxy sidecar dials, MLflow's --backend-store-uri) of a render."""
    pod = by_kind(docs, "Deployment")["mlflow"]["spec"]["template"]["spec"]
    proxy = next(c for c in pod.get("initContainers", []) if "--auto-iam-authn" in c.get("args", []))
    server = next(c for c in pod["containers"] if c["name"] == "mlflow")
    uri = next(a.split("=", 1)[1] for a in server["args"] if a.startswith("--backend-store-uri="))
    return proxy["args"][-1], uri


@pytest.mark.parametrize("values_name", ["gke", "other"])
def test_mlflow_reaches_terraforms_cloud_sql_instance_as_its_workload_identity(renders, tf, facts, values_name):
    """terraform output chart_values.mlflow.cloudSql -> values -> the proxy's instance argument; the backend URI's
    user -> the KSA's Google service account -> terraform's IAM database user with client + instanceUser."""
    docs = renders(values_name)
    project = facts.project if values_name == "gke" else OTHER["project"]
    conn, uri = _mlflow_proxy_and_uri(docs)
    out = tf.outputs()
    cloud_sql = out["chart_values"]["value"]["mlflow"]["cloudSql"]
    assert cloud_sql["instanceConnectionName"] == out["mlflow_cloudsql_instance"]["value"] == \
        "${google_sql_database_instance.mlflow.connection_name}"
    inst = tf.resources("google_sql_database_instance")["mlflow"]
    got_project, region, name = conn.split(":")
    assert got_project == project, f"{values_name}: the proxy dials project {got_project}, the values' is {project}"
    assert any(re.fullmatch(p, name) for _, p in tf.expand(str(inst["name"]), inst, use_defaults=True)), name
    assert re.fullmatch(r"[a-z]+-[a-z]+[0-9]", region)
    ksa = by_kind(docs, "ServiceAccount")[
        by_kind(docs, "Deployment")["mlflow"]["spec"]["template"]["spec"]["serviceAccountName"]]
    email = ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    user = re.fullmatch(r"postgresql://([^:@/]+)@127\.0\.0\.1:5432/(\w+)\?sslmode=disable", uri)
    assert user, uri
    assert user.group(1).replace("%40", "@") == email.removesuffix(".gserviceaccount.com")
    assert user.group(2) == tf.resources("google_sql_database")["mlflow"]["name"]
    found = _gsa_resource(tf, email.split("@")[0])
    assert found == ("workload", "mlflow"), found
    grants = [g for g in tf.resources("google_project_iam_member").values()
              if 'workload[\\"mlflow\\"]' in str(g.get("member")) or 'workload["mlflow"]' in str(g.get("member"))]
    roles = {r for g in grants for r in (tf.for_each(g) or {g.get("role"): None})}
    assert {"roles/cloudsql.client", "roles/cloudsql.instanceUser"} <= roles, roles
    sql_user = tf.resources("google_sql_user")["mlflow"]
    assert sql_user["type"] == "CLOUD_IAM_SERVICE_ACCOUNT"
    assert 'google_service_account.workload[' in str(tf.locals["mlflow_db_user"])


# ---- parameters: triggers, templateRef, workflow parameters -----------------------------------------------------

def _path_exists(node, dotted: str) -> bool:
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_cron_and_sensor_pass_only_parameters_the_template_declares(renders, values_name):
    docs = renders(values_name)
    templates = by_kind(docs, "WorkflowTemplate")
    submitted = [(doc_id(d), d["spec"].get("workflowSpec") or {}, None) for d in docs if d["kind"] == "CronWorkflow"]
    problems = []
    for sensor in (d for d in docs if d["kind"] == "Sensor"):
        deps = {dep["name"]: dep for dep in sensor["spec"].get("dependencies") or []}
        sources = by_kind(docs, "EventSource")
        for name, dep in deps.items():
            source = sources.get(dep.get("eventSourceName"))
            events = {e for k, v in ((source or {}).get("spec") or {}).items() if isinstance(v, dict) and k != "service"
                      for e in v}
            if source is not None and dep.get("eventName") not in events:
                problems.append(f"{doc_id(sensor)} dependency `{name}`: EventSource/{dep.get('eventSourceName')} has "
                                f"no event `{dep.get('eventName')}` (it has {sorted(events)})")
        for i, trigger in enumerate(sensor["spec"].get("triggers") or []):
            resource = w.trigger_workflow(trigger)
            if resource is None:
                problems.append(f"{doc_id(sensor)} trigger {i}: submits no Workflow")
                continue
            submitted.append((f"{doc_id(sensor)} trigger {i}", resource.get("spec") or {}, None))
            kind_spec = next(v for k, v in trigger["template"].items() if k in ("argoWorkflow", "k8s"))
            for p in kind_spec.get("parameters") or []:
                if not _path_exists(resource, p.get("dest", "")):
                    problems.append(f"{doc_id(sensor)} trigger {i}: parameter dest `{p.get('dest')}` is not a path "
                                    f"of the Workflow it submits")
                dep_name = (p.get("src") or {}).get("dependencyName")
                if dep_name not in deps:
                    problems.append(f"{doc_id(sensor)} trigger {i}: parameter src dependencyName `{dep_name}` is not "
                                    f"one of its dependencies {sorted(deps)}")
    assert submitted, f"{values_name}: no CronWorkflow or Sensor in the render"
    for where, spec, _ in submitted:
        ref = (spec.get("workflowTemplateRef") or {}).get("name")
        if ref not in templates:
            problems.append(f"{where}: workflowTemplateRef `{ref}` is not a rendered WorkflowTemplate "
                            f"{sorted(templates)}")
            continue
        declared = {p["name"] for p in (templates[ref]["spec"].get("arguments") or {}).get("parameters") or []}
        for p in (spec.get("arguments") or {}).get("parameters") or []:
            if p["name"] not in declared:
                problems.append(f"{where}: passes parameter `{p['name']}`, which WorkflowTemplate/{ref} does not "
                                f"declare")
        if spec.get("entrypoint") and not any(t["name"] == spec["entrypoint"] for t in templates[ref]["spec"]["templates"]):
            problems.append(f"{where}: entrypoint `{spec['entrypoint']}` is not a template of WorkflowTemplate/{ref}")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_template_calls_name_existing_templates_and_pass_their_declared_inputs(renders, values_name):
    graph = w.call_graph(renders(values_name))
    assert graph.reached, f"{values_name}: no WorkflowTemplate reached"
    problems = graph.of("missing-template") + graph.of("undeclared-argument") + graph.of("missing-argument")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_workflow_parameters_are_declared_by_every_workflow_that_reaches_the_template(renders, values_name):
    graph = w.call_graph(renders(values_name))
    assert graph.of("workflow-param") == [], "\n".join(graph.of("workflow-param"))


# ---- no project id outside values and terraform variables ------------------------------------------------------

SCAN_DIRS = ("workflows", "charts", "steps", "scripts", "docs", ".github", "images", "terraform")
SCAN_FILES = ("README.md", "Makefile", "Dockerfile.train", "Dockerfile.serve", "pyproject.toml")
SKIP_DIRS = {"node_modules", "__pycache__", ".git"}


def allowed_to_name_the_project(path: Path) -> bool:
    """values files, terraform variables and the tfvars example: where a project id belongs."""
    name = path.name
    return bool(re.fullmatch(r"values([-.][\w.-]+)?\.ya?ml", name)) or name == "variables.tf" \
        or name.endswith((".tfvars", ".tfvars.example"))


def scanned_files() -> list[Path]:
    roots = [REPO / d for d in SCAN_DIRS] + [LAYOUT.monitoring, LAYOUT.rendered]
    files = {REPO / f for f in SCAN_FILES if (REPO / f).is_file()}
    for root in roots:
        if root.is_dir():
            for path in root.rglob("*"):
                rel = path.relative_to(REPO).parts
                if path.is_file() and not SKIP_DIRS & set(rel) and not any(p.startswith(".venv") for p in rel):
                    files.add(path)
    return sorted(files)


def test_no_project_id_registry_or_bucket_is_written_outside_values_and_terraform_variables(facts):
    patterns = facts.hardcoded()
    assert patterns and facts.project, (f"cannot read a project id from values-gke.yaml image.registry "
                                        f"{facts.registry!r} against terraform's image_registry output")
    hits = []
    for path in scanned_files():
        if allowed_to_name_the_project(path):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            for label, pattern in patterns:
                if m := pattern.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{n}: {label} `{m.group(0)}` (values-gke.yaml's project "
                                f"`{facts.project}`)")
    assert hits == [], "\n".join(hits)


def test_another_registry_project_and_bucket_reach_every_workflow_template(renders, facts):
    docs = renders("other")
    values = renders.effective["other"]
    tag = str(get_dotted(values, "image.tag") or w.load_yaml(CHART / "Chart.yaml").get("appVersion") or "")
    new_buckets = set(facts.concrete_buckets(OTHER["prefix"]))
    problems = []
    for d in docs:
        for p, s in w.strings(d):
            for label, pattern in facts.hardcoded():
                if m := pattern.search(s):
                    problems.append(f"{doc_id(d)} {p}: still names the old {label} `{m.group(0)}`")
    images = workflow_images(docs)
    assert images, "no WorkflowTemplate image in the render"
    for where, image in images:
        expected = f"{OTHER['registry']}/{image_name(image)}:{tag}"
        if image != expected:
            problems.append(f"{where}: image {image!r}, expected {expected!r} (values image.registry/image.tag)")
    for where, image in w.chart_images(docs):
        if ours(image, OTHER["registry"]) and not image.startswith(OTHER["registry"] + "/"):
            problems.append(f"{where}: image {image!r} is not under values image.registry {OTHER['registry']}")
    located = [(f"{r.root}: {r.name}", r.resolve(s)) for r in w.call_graph(docs).reached
               for _, s in w.strings(r.template, skip=("description",))]
    located += [(f"{doc_id(d)} argument {p['name']}", str(p.get("value", ""))) for d in docs
                if d["kind"] == "WorkflowTemplate" for p in (d["spec"].get("arguments") or {}).get("parameters") or []]
    for where, text in located:
        for bucket in re.findall(r"gs://([a-z0-9][a-z0-9._-]*[a-z0-9])", text):
            if bucket not in new_buckets:
                problems.append(f"{where}: location gs://{bucket} did not follow the values' buckets "
                                f"{sorted(new_buckets)}")
    assert problems == [], "\n".join(dict.fromkeys(problems))


# ---- the artifact repository ------------------------------------------------------------------------------------

def default_artifact_repository(docs: list[dict]) -> tuple[dict | None, list[str]]:
    """(repository config, problems): the namespace default (ConfigMap artifact-repositories + annotation), or the
    one every WorkflowTemplate's artifactRepositoryRef names."""
    configmaps = by_kind(docs, "ConfigMap")
    templates = by_kind(docs, "WorkflowTemplate")
    refs = {n: t["spec"].get("artifactRepositoryRef") for n, t in templates.items()}
    if all(refs.values()) and refs:
        repos, problems = [], []
        for n, ref in refs.items():
            cm = configmaps.get(ref.get("configMap") or DEFAULT_REPO_CONFIGMAP)
            key = ref.get("key") or ((cm or {}).get("metadata", {}).get("annotations") or {}).get(DEFAULT_REPO_ANNOTATION)
            if cm is None or key not in (cm.get("data") or {}):
                problems.append(f"WorkflowTemplate/{n}: artifactRepositoryRef {ref} names no rendered ConfigMap key")
            else:
                repos.append(yaml.safe_load(cm["data"][key]))
        return (repos[0] if repos else None), problems
    cm = configmaps.get(DEFAULT_REPO_CONFIGMAP)
    annotated = [n for n, c in configmaps.items() if DEFAULT_REPO_ANNOTATION in (c["metadata"].get("annotations") or {})]
    if cm is None:
        return None, [(f"no ConfigMap `{DEFAULT_REPO_CONFIGMAP}` in the render (annotated ConfigMaps: {annotated}) "
                       f"and WorkflowTemplates without artifactRepositoryRef: "
                       f"{sorted(n for n, r in refs.items() if not r)}: Argo has nowhere to save step outputs")]
    key = (cm["metadata"].get("annotations") or {}).get(DEFAULT_REPO_ANNOTATION)
    if key not in (cm.get("data") or {}):
        return None, [(f"ConfigMap/{DEFAULT_REPO_CONFIGMAP}: annotation {DEFAULT_REPO_ANNOTATION}={key!r} names no "
                       f"data key (keys: {sorted(cm.get('data') or {})})")]
    return yaml.safe_load(cm["data"][key]), []


def test_the_namespace_default_artifact_repository_is_terraforms_argo_bucket(renders, tf, facts):
    docs = renders("gke")
    repo, problems = default_artifact_repository(docs)
    assert problems == [], "gke: " + "\n".join(problems)
    gcs = (repo or {}).get("gcs")
    assert gcs, f"gke: the default artifact repository is not GCS: {repo}"
    assert "serviceAccountKeySecret" not in gcs, "gke: the GCS artifact repository uses a key Secret, not Workload Identity"
    assert facts.argo_keys, f"terraform has no Argo bucket among {[k for k, _ in facts.tf_buckets]}"
    expected = {facts.bucket(k) for k in facts.argo_keys}
    assert gcs.get("bucket") in expected, (f"gke: artifact repository bucket {gcs.get('bucket')!r}, terraform's Argo "
                                           f"bucket for values-gke.yaml's prefix {facts.prefix!r} is {expected}")
    # Every identity that runs a workflow pod can write it (terraform's bucket-level grants).
    grants = bucket_grants(tf)
    accounts = by_kind(docs, "ServiceAccount")
    runners = {str(r.template.get("serviceAccountName") or by_kind(docs, "WorkflowTemplate")[r.owner]["spec"]
                   .get("serviceAccountName") or "default") for r in w.call_graph(docs).reached if w.container_images(r)}
    for sa in sorted(runners):
        email = (accounts.get(sa, {}).get("metadata", {}).get("annotations") or {}).get("iam.gke.io/gcp-service-account")
        found = _gsa_resource(tf, email.split("@")[0]) if email else None
        if found is None:
            problems.append(f"gke: workflow pods run as ServiceAccount `{sa}`, which has no terraform Google identity")
        elif not any(g[0] in facts.argo_keys and g[1] == found and g[2] in WRITE_ROLES for g in grants):
            problems.append(f"gke: ServiceAccount `{sa}` ({email}) has no write grant on the Argo bucket "
                            f"(terraform grants: {sorted(grants)})")
    assert problems == [], "\n".join(problems)


def bucket_grants(tf: w.Terraform) -> set[tuple[str, tuple[str, str | None], str]]:
    """(bucket key, (google_service_account resource, key), role) from google_storage_bucket_iam_member resources."""
    out = set()
    for body in tf.resources("google_storage_bucket_iam_member").values():
        entries = tf.for_each(body) or {None: {}}
        for value in entries.values():
            def pick(expr: str, value=value) -> str | None:
                m = re.search(r"\[each\.value\.(\w+)\]", expr) or re.search(r"\[\"?([\w-]+)\"?\]", expr)
                if not m:
                    return None
                return value.get(m.group(1)) if "each.value" in m.group(0) and isinstance(value, dict) else m.group(1)
            bucket = pick(str(body.get("bucket", "")))
            m = re.search(r"google_service_account\.(\w+)", str(body.get("member", "")))
            sa_key = pick(str(body.get("member", "")))
            role = str(body.get("role", ""))
            if role.startswith("${each.value.") and isinstance(value, dict):
                role = str(value.get(role[len("${each.value."):-1]))
            if bucket and m:
                out.add((bucket, (m.group(1), sa_key), role))
    return out


# ---- Argo Events and the one retrain caller ---------------------------------------------------------------------

def alert_rules(docs: list[dict]) -> list[dict]:
    return [r for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"] for r in g["rules"]
            if "alert" in r]


@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_event_source_and_sensor_have_an_event_bus_filters_and_a_rate_limit(renders, values_name):
    docs = renders(values_name)
    events = [d for d in docs if d["kind"] in ("EventSource", "Sensor")]
    assert events, f"{values_name}: no EventSource/Sensor rendered"
    buses = by_kind(docs, "EventBus")
    problems = [f"{values_name}: {doc_id(d)} uses EventBus `{d['spec'].get('eventBusName') or 'default'}`, which the "
                f"chart does not render (EventBuses: {sorted(buses)})"
                for d in events if (d["spec"].get("eventBusName") or "default") not in buses]
    alerts = {r["alert"] for r in alert_rules(docs)}
    for sensor in (d for d in docs if d["kind"] == "Sensor"):
        for dep in sensor["spec"].get("dependencies") or []:
            if not dep.get("filters"):
                problems.append(f"{values_name}: {doc_id(sensor)} dependency `{dep['name']}` has no filters: any POST "
                                f"starts a retrain")
            text = yaml.safe_dump(dep.get("filters") or {})
            if "alertname" in text and alerts and not any(a in text for a in alerts):
                problems.append(f"{values_name}: {doc_id(sensor)} filters on an alertname, none of {sorted(alerts)}")
        for i, trigger in enumerate(sensor["spec"].get("triggers") or []):
            limit = trigger.get("rateLimit") or {}
            if not (limit.get("unit") and int(limit.get("requestsPerUnit") or 0) >= 1):
                problems.append(f"{values_name}: {doc_id(sensor)} trigger {i} has no rateLimit (unit, requestsPerUnit)")
    assert problems == [], "\n".join(problems)


def alertmanager_config(chart: Path, values: dict) -> tuple[dict, str]:
    """Alertmanager's configuration as the chart ships it (its Secret, when rendered), else the file."""
    docs = w.render(chart, w.deep_merge(values, {"monitoring": {"alertmanager": {"enabled": True}}}))
    import base64

    for d in docs:
        for k, v in (d.get("data") or {}).items() if d["kind"] in ("Secret", "ConfigMap") else []:
            if k == "alertmanager.yaml":
                text = base64.b64decode(v).decode() if d["kind"] == "Secret" else v
                return yaml.safe_load(text), f"{doc_id(d)} alertmanager.yaml"
    path = LAYOUT.monitoring / "alertmanager" / "alertmanager.yaml"
    return w.load_yaml(path), str(path.relative_to(REPO))


def _matches(labels: dict, route: dict) -> bool:
    ok = True
    for m in route.get("matchers") or []:
        parsed = re.fullmatch(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*', str(m))
        if parsed is None:
            return False
        name, op, value = parsed.groups()
        have = str(labels.get(name, ""))
        ok &= {"=": have == value, "!=": have != value, "=~": re.fullmatch(value, have) is not None,
               "!~": re.fullmatch(value, have) is None}[op]
    ok &= all(str(labels.get(k, "")) == str(v) for k, v in (route.get("match") or {}).items())
    ok &= all(re.fullmatch(str(v), str(labels.get(k, ""))) for k, v in (route.get("match_re") or {}).items())
    return ok


def _routes(route: dict) -> list[dict]:
    return [route] + [r for child in route.get("routes") or [] for r in _routes(child)]


@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_alertmanager_is_the_one_caller_of_the_retrain_webhook(renders, chart, values_name):
    docs = renders(values_name)
    sources = by_kind(docs, "EventSource")
    assert sources, f"{values_name}: no EventSource rendered"
    problems = []
    # Nothing in the cluster but Alertmanager calls the webhook: no predictor pod knows its URL, token or flags.
    hooks = {f"{n}-eventsource-svc" for n in sources}
    secrets = {(s.get("authSecret") or {}).get("name") for es in sources.values()
               for kind in es["spec"].values() if isinstance(kind, dict) for s in kind.values() if isinstance(s, dict)}
    secrets.discard(None)
    for d in docs:
        if d["kind"] in ("EventSource", "Sensor", "Secret"):
            continue
        for p, s in w.strings(d):
            if any(h in s for h in hooks) or s in ("--webhook-url", "--webhook-token-file"):
                problems.append(f"{values_name}: {doc_id(d)} {p}: {s!r}: a second caller of the retraining webhook")
            if "kserve-provision-location" in s:
                problems.append(f"{values_name}: {doc_id(d)} {p}: names KServe's internal volume kserve-provision-location")
        if d["kind"] in ("InferenceService", "ServingRuntime", "Deployment"):
            for p, key, v in w.walk(d):
                if key == "secret" and isinstance(v, dict) and v.get("secretName") in secrets:
                    problems.append(f"{values_name}: {doc_id(d)} {p}: mounts the webhook token Secret {v['secretName']}")
    # Alertmanager's route reaches the EventSource's Service: name, port, path, token.
    config, where = alertmanager_config(chart, renders.values[values_name])
    receivers = {r["name"]: r for r in config.get("receivers") or []}
    callers = []
    for name, receiver in receivers.items():
        for hook in receiver.get("webhook_configs") or []:
            url = urlparse(str(hook.get("url", "")))
            host = (url.hostname or "").split(".")
            if host and host[0] in hooks:
                callers.append((name, hook, url, host))
    if not callers:
        problems.append(f"{values_name}: {where}: no receiver posts to {sorted(hooks)}")
    for name, hook, url, host in callers:
        es = sources[host[0][: -len("-eventsource-svc")]]
        if len(host) < 3 or host[1] != NAMESPACE or host[2] != "svc":
            problems.append(f"{where}: receiver {name} url {url.geturl()} is not <svc>.{NAMESPACE}.svc (Alertmanager "
                            f"runs in another namespace)")
        targets = {p.get("port"): p.get("targetPort", p.get("port")) for p in (es["spec"].get("service") or {}).get("ports") or []}
        webhooks = {str(v.get("port")): v for v in (es["spec"].get("webhook") or {}).values()}
        target = targets.get(url.port)
        if target is None:
            problems.append(f"{where}: receiver {name} port {url.port} is not a port of the EventSource Service "
                            f"{sorted(targets)}")
        elif str(target) not in webhooks:
            problems.append(f"{where}: receiver {name} port {url.port} -> targetPort {target}, no webhook listens there")
        elif webhooks[str(target)].get("endpoint") != url.path:
            problems.append(f"{where}: receiver {name} path {url.path!r}, the EventSource endpoint is "
                            f"{webhooks[str(target)].get('endpoint')!r}")
        else:
            auth = webhooks[str(target)].get("authSecret")
            cred = str(((hook.get("http_config") or {}).get("authorization") or {}).get("credentials_file", ""))
            if auth and not cred.endswith(f"/{auth['name']}/{auth['key']}"):
                problems.append(f"{where}: receiver {name} sends credentials_file {cred!r}, the EventSource checks "
                                f"Secret {auth['name']} key {auth['key']}")
        routed = [r for r in _routes(config.get("route") or {}) if r.get("receiver") == name]
        if not fired_alerts(docs, routed):
            problems.append(f"{where}: no alert of the rendered PrometheusRules is routed to receiver {name}")
    # The Secrets Alertmanager reads live in its own namespace (kube-prometheus-stack's, charts/platform/versions.yaml):
    # the operator creates them there.
    am_namespace = w.platform_namespace("kube-prometheus-stack")
    for secret in sorted(set(re.findall(r"/etc/alertmanager/secrets/([^/\s'\"]+)/", yaml.safe_dump(config)))):
        if am_namespace is None:
            problems.append("charts/platform/versions.yaml installs no kube-prometheus-stack: where does Alertmanager run?")
        elif not in_runbook("Secret", secret, am_namespace):
            problems.append(f"{where}: Alertmanager reads Secret `{secret}` (alertmanagerSpec.secrets), which "
                            f"docs/runbook.md's operator table does not create in namespace `{am_namespace}`")
    assert problems == [], "\n".join(dict.fromkeys(problems))


def fired_alerts(docs: list[dict], routes: list[dict]) -> list[str]:
    return [a["alert"] for a in alert_rules(docs) for r in routes
            if _matches({"alertname": a["alert"], **(a.get("labels") or {})}, r)]


# ---- Prometheus, runbook links, deadlines and retries ----------------------------------------------------------

@pytest.mark.parametrize("values_name", ["default", "gke", "prometheus"])
def test_the_rollout_queries_the_prometheus_of_the_values(renders, values_name):
    docs = renders(values_name)
    url = get_dotted(renders.effective[values_name], "monitoring.prometheus.url")
    seen, problems = [], []
    for r in w.call_graph(docs).reached:
        c = r.template.get("container") or {}
        args = [str(a) for a in c.get("args") or []]
        values = [("arg --prometheus-url", args[i + 1]) for i, a in enumerate(args[:-1]) if a == "--prometheus-url"]
        values += [(f"env {e['name']}", str(e.get("value", ""))) for e in c.get("env") or [] if "PROMETHEUS_URL" in e["name"]]
        for what, raw in values:
            seen.append(r.name)
            if r.resolve(raw) != url:
                problems.append(f"{values_name}: {r.root}: {r.name} {what} = {r.resolve(raw)!r}, values "
                                f"monitoring.prometheus.url = {url!r}")
    assert seen, f"{values_name}: no rendered template passes a Prometheus URL to the rollout analysis"
    if values_name != "prometheus":  # the chart's own default: kube-prometheus-stack's Service, where it is installed
        host = (urlparse(url).hostname or "").split(".")
        stack = w.platform_namespace("kube-prometheus-stack")
        if stack and not (len(host) >= 3 and host[0] == "prometheus-operated" and host[1] == stack):
            problems.append(f"{values_name}: monitoring.prometheus.url {url!r} is not kube-prometheus-stack's "
                            f"`prometheus-operated` Service in `{stack}` (charts/platform/versions.yaml)")
    assert problems == [], "\n".join(dict.fromkeys(problems))


def test_runbook_urls_are_absolute_https(renders):
    rules = alert_rules(renders("gke"))
    assert rules, "gke: no alerting rule rendered"
    urls = [(r["alert"], (r.get("annotations") or {}).get("runbook_url")) for r in rules]
    assert any(u for _, u in urls), "no alert has a runbook_url annotation"
    bad = [f"{a}: runbook_url {u!r} is not an absolute https URL (Slack and Grafana cannot open a repository path)"
           for a, u in urls if u and not (urlparse(u).scheme == "https" and urlparse(u).netloc)]
    assert bad == [], "\n".join(bad)


def evaluate_retry(expression: str, status: str, exit_code: int) -> bool:
    """Argo's retryStrategy.expression (expr-lang) for one attempt, with the govaluate subset of
    sentimentops.workflows.argo.expressions (asInt(x) -> a number variable, `matches` -> =~)."""
    from sentimentops.workflows.argo import expressions as ex

    text = re.sub(r"asInt\(\s*lastRetry\.(\w+)\s*\)", r"__int_\1", expression).replace(" matches ", " =~ ")
    env = {"lastRetry.status": status, "lastRetry.exitCode": str(exit_code), "__int_exitCode": float(exit_code),
           "lastRetry.duration": "60", "__int_duration": 60.0, "lastRetry.message": ""}

    def resolve(name: str):
        if name not in env:
            raise ex.ExpressionError(f"unknown variable {name}")
        return env[name]
    try:
        result = ex.evaluate_node(ex.parse(text), resolve)
    except ex.ExpressionError:
        result = _evaluate_expr_lang(expression, status, exit_code)
    assert isinstance(result, bool), f"retry expression {expression!r} is not a boolean"
    return result


class _Infix:
    def __init__(self, fn) -> None:
        self.fn = fn

    def __ror__(self, left):
        return _Infix(lambda right: self.fn(left, right))

    def __or__(self, right):
        return self.fn(right)


def _evaluate_expr_lang(expression: str, status: str, exit_code: int) -> bool:
    """The expr-lang operators outside the govaluate subset (contains, matches, startsWith, endsWith, in, not,
    and, or), translated to Python and evaluated over lastRetry alone: a restricted eval of a repository string."""
    from types import SimpleNamespace

    text = re.sub(r"&&", " and ", expression)
    text = re.sub(r"\|\|", " or ", text)
    text = re.sub(r"!(?!=)", " not ", text)
    for op in ("contains", "matches", "startsWith", "endsWith"):
        text = re.sub(rf"\s{op}\s", f" |_{op}| ", text)
    if re.search(r"[^\w\s.()\"'<>=!|,\[\]-]", text.replace("not", "")):
        pytest.fail(f"retry expression {expression!r}: an operator this test cannot evaluate")
    names = {"lastRetry": SimpleNamespace(status=status, exitCode=str(exit_code), duration="60", message=""),
             "asInt": int, "asFloat": float, "true": True, "false": False,
             "_contains": _Infix(lambda a, b: b in a), "_matches": _Infix(lambda a, b: re.search(b, a) is not None),
             "_startsWith": _Infix(lambda a, b: a.startswith(b)), "_endsWith": _Infix(lambda a, b: a.endswith(b))}
    try:
        return bool(eval(text, {"__builtins__": {}}, names))
    except Exception as exc:  # noqa: BLE001 - any failure is the expression's: say which
        pytest.fail(f"retry expression {expression!r} cannot be evaluated ({text!r}: {exc})")


def retried(strategy: dict | None, status: str, exit_code: int) -> bool:
    """Would Argo retry a node that ended with this status/exit code? Both the retryPolicy (default OnFailure) and
    the expression must allow it (docs: retries.md; the expression 'evaluates to false: not retried')."""
    if not strategy or str(strategy.get("limit", "1")) == "0":
        return False
    policy = strategy.get("retryPolicy") or "OnFailure"
    allowed = {"Always": {"Failed", "Error"}, "OnFailure": {"Failed"}, "OnError": {"Error"},
               "OnTransientError": {"Error"}}.get(policy, set())
    if status not in allowed:
        return False
    return evaluate_retry(strategy["expression"], status, exit_code) if strategy.get("expression") else True


def _stage_templates(docs: list[dict], words: list[str]) -> dict[str, dict]:
    return {r.name: r.template for r in w.call_graph(docs).reached if subcommand(r.template)[:len(words)] == words}


def test_train_and_the_analysis_have_deadlines_and_train_never_retries_a_data_or_usage_error(renders):
    from sentimentops.steps.core.errors import NOT_RETRIED

    docs = renders("gke")
    train, analyse = _stage_templates(docs, ["train"]), _stage_templates(docs, ["rollout", "analyse"])
    assert train, "no reached template runs `sentimentops train`"
    assert analyse, "no reached template runs `sentimentops rollout analyse`"
    problems = []
    for name, t in {**train, **analyse}.items():
        deadline = str(t.get("activeDeadlineSeconds", ""))
        if not (deadline.isdigit() and int(deadline) > 0):
            problems.append(f"{name}: no activeDeadlineSeconds (a hung step holds its node forever)")
    for name, t in train.items():
        for code in NOT_RETRIED:
            if retried(t.get("retryStrategy"), "Failed", code):
                problems.append(f"{name}: retries exit {code} (deterministic: steps/core/errors.py NOT_RETRIED) with "
                                f"{t.get('retryStrategy')}")
        if not retried(t.get("retryStrategy"), "Error", -1):
            problems.append(f"{name}: is not retried on an infrastructure error (Spot preemption)")
    assert problems == [], "\n".join(problems)


def test_no_step_retries_a_data_or_usage_error(renders):
    from sentimentops.steps.core.errors import NOT_RETRIED

    problems = []
    for r in w.call_graph(renders("gke")).reached:
        if subcommand(r.template):
            for code in NOT_RETRIED:
                if retried(r.template.get("retryStrategy"), "Failed", code):
                    problems.append(f"{r.name} (`sentimentops {' '.join(subcommand(r.template))}`) retries exit "
                                    f"{code}: {r.template.get('retryStrategy')}")
    assert problems == [], "\n".join(dict.fromkeys(problems))


def test_every_path_to_a_rollout_step_holds_one_rollout_mutex(renders):
    """Two rollouts must never patch the InferenceService at once, however they were started: every path from a
    submitted workflow to a `sentimentops rollout ...` step holds one common mutex (template level, so a templateRef
    caller holds it too; a workflow-level mutex only covers workflows submitted from that template)."""
    docs = renders("gke")
    templates = by_kind(docs, "WorkflowTemplate")
    held: dict[str, set[str]] = {}
    for r in w.call_graph(docs).reached:
        words = subcommand(r.template)
        if words[:1] == ["rollout"]:
            root_spec = templates.get(r.root.split("/", 1)[1].split(" ")[0], {}).get("spec") \
                if r.root.startswith("WorkflowTemplate/") else None
            locks = set().union(*(w.mutexes(t) for t in r.chain)) | w.mutexes(root_spec)
            held[f"{r.root}: {r.name} (`sentimentops {' '.join(words)}`, via {' -> '.join(r.path)})"] = locks
    assert held, "no reached template runs `sentimentops rollout ...`"
    common = set.intersection(*held.values())
    assert common, "no mutex is held on every path to a rollout step:\n" + "\n".join(
        f"{where}: holds {sorted(locks) or 'nothing'}" for where, locks in held.items())


# ---- KServe ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values_name", ["default", "gke"])
def test_the_inference_service_runs_on_the_charts_serving_runtime(renders, values_name):
    docs = renders(values_name)
    services = by_kind(docs, "InferenceService")
    assert services, f"{values_name}: no InferenceService rendered"
    runtimes = by_kind(docs, "ServingRuntime")
    problems = []
    for name, isvc in services.items():
        model = (isvc["spec"]["predictor"].get("model") or {})
        if not model:
            problems.append(f"{values_name}: InferenceService/{name}: predictor has no `model` (a custom container, "
                            f"not a ServingRuntime + predictor.model)")
            continue
        runtime = runtimes.get(model.get("runtime"))
        if runtime is None:
            problems.append(f"{values_name}: InferenceService/{name} runtime `{model.get('runtime')}` is not a "
                            f"rendered ServingRuntime {sorted(runtimes)}")
            continue
        fmt = (model.get("modelFormat") or {})
        formats = [(f.get("name"), str(f.get("version", ""))) for f in runtime["spec"].get("supportedModelFormats") or []]
        if not any(n == fmt.get("name") and (not fmt.get("version") or v == str(fmt["version"])) for n, v in formats):
            problems.append(f"{values_name}: InferenceService/{name} modelFormat {fmt} is not supported by "
                            f"ServingRuntime/{runtime['metadata']['name']} {formats}")
    assert problems == [], "\n".join(problems)


# ---- the chart from a clone -------------------------------------------------------------------------------------

def test_helm_install_from_a_clone_renders_every_argo_document(tmp_path):
    import helm_python as helm

    bare = w.chart_copy(tmp_path, sync=False)
    try:
        docs = w.render(bare, {})
    except helm.HelmError as exc:
        pytest.fail(f"the chart as cloned does not render (no copy step may be needed): {exc}")
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    sources = sorted(LAYOUT.rendered.glob("*.yaml"))
    assert sources, f"no rendered Argo YAML in {LAYOUT.rendered.relative_to(REPO)}"
    missing = [f"{s.relative_to(REPO)}: {d['kind']}/{d['metadata']['name']} is not in `helm template` of the chart "
               f"as cloned (no copy step may be needed)"
               for s in sources for d in yaml.safe_load_all(s.read_text()) if d and (d["kind"], d["metadata"]["name"]) not in have]
    assert missing == [], "\n".join(missing)


# ---- the kind harness (scripts/e2e/run.sh) ----------------------------------------------------------------------

# Values the harness learns while it runs (from the first training): stand-ins of the shape the chart's schema wants.
RUNTIME_STANDINS = {"storageUri": "pvc://mlflow-artifacts/wiring/model", "modelVersion": "1"}


class Harness:
    """The commands scripts/e2e/run.sh runs: its own dry run (`E2E_DRY_RUN=1` prints every command as `+ cmd`,
    offline) when it has one, else the script read with its variables, loops and functions expanded."""

    def __init__(self) -> None:
        self.error = ""
        text = E2E.read_text() if E2E.is_file() else ""
        if "E2E_DRY_RUN" in text:
            import os
            import subprocess
            import sys

            proc = subprocess.run(["bash", str(E2E)], check=False, cwd=REPO, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "E2E_DRY_RUN": "1", "E2E_PYTHON": sys.executable})
            if proc.returncode != 0:
                self.error = f"E2E_DRY_RUN=1 {E2E.relative_to(REPO)} exited {proc.returncode}: {proc.stderr[-1500:]}"
            self.commands = [self._command(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]
        else:
            self.commands = w.sh_commands(text)
        self.installs = [c for c in self.commands if self._installs_chart(w.shell_words(c))]
        self.builds: set[str] = set()
        for c in self.commands:
            words = w.shell_words(c)
            if "build" in words:
                self.builds.update(w.flag_values(words, "-t", "--tag"))

    @staticmethod
    def _command(line: str) -> str:
        m = re.fullmatch(r"\w+=\$\((.*)\)", line)  # capture VAR cmd: `+ VAR=$(cmd)`
        return (m.group(1) if m else line).removesuffix(" &")

    @staticmethod
    def _installs_chart(words: list[str]) -> bool:
        return len(words) > 2 and words[0] == "helm" and words[1] in ("install", "upgrade") \
            and any(x.rstrip("/").endswith("charts/sentimentops") for x in words)

    def values(self, command: str) -> tuple[dict, str]:
        words = w.shell_words(command)
        values: dict = {}
        for f in w.flag_values(words, "-f", "--values"):
            values = w.deep_merge(values, w.load_yaml(REPO / f))
        for flag in ("--set", "--set-string", "--set-file"):
            for item in w.flag_values(words, flag):
                for pair in item.split(","):
                    key, _, raw = pair.partition("=")
                    value = raw if flag != "--set" else yaml.safe_load(raw) if raw else ""
                    if isinstance(value, str) and re.fullmatch(r"<\w+>|\$\w+|\$\{\w+\}", value):
                        # known only when it runs (the dry run prints `<VAR>`): a stand-in of the same shape
                        value = RUNTIME_STANDINS.get(key.rsplit(".", 1)[-1], value)
                    w.set_dotted(values, key, "<file>" if flag == "--set-file" else value)
        namespace = (w.flag_values(words, "-n", "--namespace") or [NAMESPACE])[-1]
        return values, namespace


@cache
def _harness() -> Harness:
    return Harness()


@pytest.fixture(scope="module")
def harness() -> Harness:
    h = _harness()
    assert not h.error, h.error
    assert h.installs, f"{E2E.relative_to(REPO)} installs no charts/sentimentops"
    return h


@pytest.fixture(scope="module")
def kind_render(chart, harness) -> tuple[list[dict], str, dict]:
    values, namespace = harness.values(harness.installs[-1])
    return w.render(chart, values, namespace), namespace, values


def test_kind_harness_builds_every_image_the_templates_use(kind_render, harness):
    docs, _, values = kind_render
    registry = str(get_dotted(w.deep_merge(w.load_yaml(CHART / "values.yaml"), values), "image.registry") or "")
    used = [(where, i) for where, i in workflow_images(docs) + w.chart_images(docs) if ours(i, registry)]
    assert used, "kind: no sentimentops image in the render"
    built_names = {image_name(b) for b in harness.builds}
    problems = []
    for where, image in used:
        exact = image in harness.builds or any(re.fullmatch(w.unresolved_to_regex(b), image) for b in harness.builds)
        if not exact:
            problems.append(f"kind: {where}: {image} is not built by {E2E.relative_to(REPO)} "
                            f"({'same name, other registry/tag' if image_name(image) in built_names else 'not built'};"
                            f" it builds {sorted(harness.builds)})")
    assert problems == [], "\n".join(dict.fromkeys(problems))


def test_kind_harness_installs_the_inference_service_with_a_storage_uri(chart, harness):
    problems = []
    for n, command in enumerate(harness.installs, start=1):
        values, namespace = harness.values(command)
        services = by_kind(w.render(chart, values, namespace), "InferenceService")
        for name, isvc in services.items():
            predictor = isvc["spec"]["predictor"]
            uris = [str((predictor.get("model") or {}).get("storageUri") or "")]
            uris += [str(e.get("value", "")) for c in predictor.get("containers") or [] for e in c.get("env") or []
                     if e["name"] == "STORAGE_URI"]
            if not any(uris):
                problems.append(f"install {n} ({command[:120]}...): InferenceService/{name} has no storageUri")
        if n == len(harness.installs) and not services:
            problems.append(f"the last install ({command[:120]}...) renders no InferenceService "
                            f"(inferenceService.enabled is false)")
    assert problems == [], "\n".join(problems)


def test_kind_artifact_repository_endpoint_resolves_from_the_release_namespace(kind_render, harness):
    docs, namespace, _ = kind_render
    repo, problems = default_artifact_repository(docs)
    assert problems == [], "kind: " + "\n".join(problems)
    s3 = (repo or {}).get("s3")
    assert s3, f"kind: the default artifact repository is not S3 (MinIO): {repo}"
    host = str(s3.get("endpoint", "")).split(":")[0].split(".")
    namespaces = {x for c in harness.commands for x in w.flag_values(w.shell_words(c), "-n", "--namespace")}
    namespaces |= {m for c in harness.commands for m in re.findall(r"create namespace (\S+)", c)}
    if len(host) == 1:
        assert host[0] in by_kind(docs, "Service"), (
            f"kind: artifact endpoint {s3.get('endpoint')!r} is a short name, and no Service `{host[0]}` is rendered in "
            f"{namespace}: it does not resolve from the release namespace (use <svc>.<namespace>.svc.cluster.local)")
    else:
        assert len(host) >= 3 and host[2] == "svc" and host[1] in namespaces | {namespace}, (
            f"kind: artifact endpoint {s3.get('endpoint')!r} names namespace {host[1:2]}, which the harness never "
            f"installs into ({sorted(namespaces)})")
    for key in ("accessKeySecret", "secretKeySecret"):
        name = (s3.get(key) or {}).get("name")
        # created by the harness: `create secret ... NAME`, or a manifest applied from a path/URL that names it
        created = any(name in w.shell_words(c) or ("apply" in c and name in c) for c in harness.commands
                      if "secret" in c)
        if name and name not in by_kind(docs, "Secret") and not created:
            problems.append(f"kind: artifact repository {key} Secret `{name}` is neither rendered nor created by "
                            f"{E2E.relative_to(REPO)}")
    assert problems == [], "\n".join(problems)


def test_kind_harness_submits_a_rendered_template_with_declared_parameters(kind_render, harness):
    docs, _, _ = kind_render
    templates = by_kind(docs, "WorkflowTemplate")
    submits = [w.shell_words(c) for c in harness.commands
               if w.shell_words(c)[:1] == ["argo"] and "submit" in w.shell_words(c)]
    assert submits, f"{E2E.relative_to(REPO)} submits no workflow"
    problems = []
    for words in submits:
        source = (w.flag_values(words, "--from") or [""])[0]
        name = source.split("/", 1)[-1]
        matches = [t for t in templates if re.fullmatch(w.unresolved_to_regex(name), t)]
        if not source.startswith("workflowtemplate/") or len(matches) != 1:
            problems.append(f"argo submit --from {source!r}: not one rendered WorkflowTemplate {sorted(templates)}")
            continue
        declared = {p["name"] for p in (templates[matches[0]]["spec"].get("arguments") or {}).get("parameters") or []}
        for p in w.flag_values(words, "-p", "--parameter"):
            if p.split("=", 1)[0] not in declared:
                problems.append(f"argo submit {matches[0]}: -p {p.split('=', 1)[0]} is not a parameter of the template")
        for sa in w.flag_values(words, "--serviceaccount"):
            if sa not in by_kind(docs, "ServiceAccount"):
                problems.append(f"argo submit --serviceaccount {sa}: not a rendered ServiceAccount")
    assert problems == [], "\n".join(problems)
