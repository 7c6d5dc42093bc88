"""RBAC that works: the deploy identity's Role (terraform/deploy.tf, created outside the chart) against what
`helm upgrade --install` of charts/sentimentops needs, derived from a render of the chart, never from a list kept
here; and the Sensor's ServiceAccount against what submitting a Workflow from the WorkflowTemplate needs.

What Helm needs, and why (Helm 3/4 source, pkg/kube and pkg/storage/driver):
- every kind the chart renders: get (the live object), create, patch (an upgrade is a three-way merge patch; Helm 4
  applies server-side, also a patch), update (`--force` replaces), delete (objects a new chart version drops, and
  `--atomic` rollbacks), list + watch (`--wait` follows the objects' status);
- Secrets: the release store (the default `secrets` driver gets, lists, creates, updates and deletes the
  sh.helm.release.v1.<release>.v<n> Secrets);
- Pods and ReplicaSets: read by `--wait` to judge Deployments ready;
- RBAC escalation prevention (Kubernetes RBAC docs, "Privilege escalation prevention"): a user may create or update
  a Role, or bind it, only if they hold every permission it grants (or the escalate/bind verbs, which this
  identity must not have). So every rule of every Role the chart renders must be covered by the deploy Role.

Argo Events' argoWorkflow trigger (operation submit) runs `argo -n <ns> submit <file>` in the Sensor pod; Argo's
workflow service validates the Workflow before creating it and resolves its workflowTemplateRef through a
WorkflowTemplate getter (server/workflow CreateWorkflow: templateresolution.WrapWorkflowTemplateInterface). So the
Sensor's ServiceAccount needs `create workflows` and `get workflowtemplates` in the namespace.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import terraform_hcl
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sentimentops"
TF = REPO / "terraform"
NAMESPACE = "sentimentops"
INFRA_HINT = terraform_hcl.INFRA_HINT

HELM_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
RELEASE_STORE_VERBS = {"get", "list", "create", "update", "delete"}
WAIT_READS = {("", "pods"), ("apps", "replicasets")}
# Kinds Kubernetes serves cluster-wide (a namespaced Role cannot grant them).
CLUSTER_SCOPED = {"Namespace", "Node", "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
                  "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "APIService",
                  "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "CSIDriver", "RuntimeClass",
                  "ClusterWorkflowTemplate", "ClusterServingRuntime", "ClusterStorageContainer",
                  "ClusterIssuer", "ClusterEventBus"}
# Plural resource names that do not follow English rules (the CRD's spec.names.plural).
IRREGULAR_PLURALS = {"EventBus": "eventbus"}  # argo-events CRD eventbus.argoproj.io


# ---- the chart, rendered ---------------------------------------------------------------------------------------

def _set(values: dict, dotted: str, value) -> bool:
    """Set values[a][b][c] when the chart's values.yaml has that key (so a renamed key is skipped, not invented)."""
    keys = dotted.split(".")
    node = values
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            return False
        node = node[key]
    if keys[-1] not in node:
        return False
    node[keys[-1]] = value
    return True


def value_sets() -> dict[str, dict]:
    """The default values, the GKE values, and everything optional switched on (the chart-created Secrets, the
    Alertmanager Secret, a storage URI): every kind any install can render."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    gke = yaml.safe_load((CHART / "values-gke.yaml").read_text())
    everything = copy.deepcopy(defaults)
    for dotted, value in [("secrets.retrainWebhook.token", "t"), ("secrets.alertmanagerSlack.webhookUrl", "https://hooks.slack.com/services/T/B/x"),
                          ("monitoring.alertmanager.enabled", True), ("inferenceService.storageUri", "gs://b/m"),
                          ("inferenceService.modelVersion", "1")]:
        _set(everything, dotted, value)
    return {"default": {}, "gke": gke, "everything": everything}


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    helm = pytest.importorskip("helm_python", reason=f"helm-python-sdk is not installed ({INFRA_HINT})")
    out = {}
    for name, values in value_sets().items():
        rendered = helm.Chart.load(CHART).render(values, name="sentimentops", namespace=NAMESPACE, is_install=True)
        out[name] = [d for path, text in rendered.items() if not path.endswith("NOTES.txt")
                     for d in yaml.safe_load_all(text) if d]
    return out


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def plural(kind: str) -> str:
    if kind in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[kind]
    low = kind.lower()
    if low.endswith("y") and low[-2] not in "aeiou":
        return low[:-1] + "ies"
    if low.endswith(("s", "x", "ch", "sh")):
        return low + "es"
    return low + "s"


def test_plural_rule_matches_the_api():
    assert [plural(k) for k in ("NetworkPolicy", "ConfigMap", "EventBus", "Ingress", "InferenceService",
                                "ServiceMonitor", "Sensor")] == [
        "networkpolicies", "configmaps", "eventbus", "ingresses", "inferenceservices", "servicemonitors", "sensors"]


def rendered_kinds(renders: dict[str, list[dict]]) -> set[tuple[str, str, str]]:
    return {(group_of(d["apiVersion"]), d["kind"], plural(d["kind"])) for docs in renders.values() for d in docs}


# ---- the deploy Role, parsed from terraform ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf() -> dict[str, list]:
    """All .tf files merged: {'resource': [...], 'variable': [...], ...}."""
    return terraform_hcl.load()


def _resources(tf: dict, rtype: str) -> dict[str, dict]:
    return {name: body for block in tf.get("resource", []) for name, body in block.get(rtype, {}).items()}


def _resolve(tf: dict, value):
    """A rule attribute: a literal list, or `${local.x}` naming a list in a locals block."""
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{local\.(\w+)\}", value)
        assert match, f"cannot resolve {value!r}"
        locals_ = {k: v for block in tf.get("locals", []) for k, v in block.items()}
        value = locals_[match.group(1)]
    return list(value)


Rule = tuple[frozenset, frozenset, frozenset, frozenset]  # api groups, resources, verbs, resourceNames


def tf_rules(tf: dict, rtype: str, name: str) -> list[Rule]:
    body = _resources(tf, rtype)[name]
    return [(frozenset(_resolve(tf, r["api_groups"])), frozenset(_resolve(tf, r["resources"])),
             frozenset(_resolve(tf, r["verbs"])), frozenset(_resolve(tf, r.get("resource_names", []))))
            for r in body["rule"]]


def k8s_rules(role: dict) -> list[Rule]:
    return [(frozenset(r.get("apiGroups", [])), frozenset(r.get("resources", [])), frozenset(r.get("verbs", [])),
             frozenset(r.get("resourceNames", []))) for r in role.get("rules", [])]


def allowed(rules: list[Rule], group: str, resource: str, resource_name: str | None = None) -> set[str]:
    """Verbs the rules grant on group/resource (optionally one named object), wildcards included."""
    verbs: set[str] = set()
    for groups, resources, rule_verbs, names in rules:
        matches = (group in groups or "*" in groups) and (resource in resources or "*" in resources)
        if matches and (not names or (resource_name is not None and resource_name in names)):
            verbs |= {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
                      "escalate", "bind"} if "*" in rule_verbs else set(rule_verbs)
    return verbs


@pytest.fixture(scope="module")
def deploy(tf) -> list[Rule]:
    binding = _resources(tf, "kubernetes_role_binding_v1")["deploy"]
    role = _resources(tf, "kubernetes_role_v1")["deploy"]
    assert binding["role_ref"][0]["kind"] == "Role"
    assert binding["role_ref"][0]["name"] == "${kubernetes_role_v1.deploy.metadata[0].name}"
    # Bound to the CI Google service account (GKE names a Google identity by its email), in the chart's namespace.
    assert binding["subject"] == [{"api_group": "rbac.authorization.k8s.io", "kind": "User",
                                   "name": "${google_service_account.ci.email}"}]
    for res in (role, binding):
        assert res["metadata"][0]["namespace"] == "${kubernetes_namespace_v1.app.metadata[0].name}"
    namespace = _resources(tf, "kubernetes_namespace_v1")["app"]
    assert namespace["metadata"][0]["name"] == "${var.namespace}"
    return tf_rules(tf, "kubernetes_role_v1", "deploy")


# ---- the checks --------------------------------------------------------------------------------------------------

def test_the_deploy_role_covers_every_kind_the_chart_renders(renders, deploy):
    kinds = rendered_kinds(renders)
    assert {k for _, k, _ in kinds} >= {"WorkflowTemplate", "InferenceService", "Role", "Service"}, kinds
    missing = {f"{g or 'core'}/{res}": sorted(HELM_VERBS - allowed(deploy, g, res))
               for g, kind, res in kinds if kind not in CLUSTER_SCOPED and HELM_VERBS - allowed(deploy, g, res)}
    assert not missing, f"the deploy Role (terraform/deploy.tf) lacks: {missing}"


def test_the_deploy_role_can_keep_helms_release_store_and_wait(deploy):
    assert RELEASE_STORE_VERBS <= allowed(deploy, "", "secrets")
    for group, resource in WAIT_READS:
        assert {"get", "list", "watch"} <= allowed(deploy, group, resource), resource


def test_nothing_cluster_scoped_is_left_uncovered(renders, tf):
    """A cluster-scoped kind in the chart would need a ClusterRole bound to the deploy identity."""
    scoped = {(g, k, r) for g, k, r in rendered_kinds(renders) if k in CLUSTER_SCOPED}
    scoped |= {(group_of(d["apiVersion"]), d["kind"], plural(d["kind"]))
               for docs in renders.values() for d in docs if not d["metadata"].get("namespace")}
    if not scoped:
        return
    cluster_roles = {n: tf_rules(tf, "kubernetes_cluster_role_v1", n) for n in _resources(tf, "kubernetes_cluster_role_v1")}
    bound = {b["role_ref"][0]["name"].split(".")[1] for b in _resources(tf, "kubernetes_cluster_role_binding_v1").values()
             if b["subject"][0]["name"] == "${google_service_account.ci.email}"}
    rules = [r for n in bound for r in cluster_roles.get(n, [])]
    missing = {f"{g}/{res}" for g, _, res in scoped if HELM_VERBS - allowed(rules, g, res)}
    assert not missing, f"cluster-scoped kinds the chart renders without a ClusterRole for the deploy identity: {missing}"


def test_the_deploy_role_holds_every_permission_the_charts_roles_grant(renders, deploy):
    """RBAC escalation prevention: creating (or binding) a Role needs every permission it grants."""
    assert not {"escalate", "bind"} & allowed(deploy, "rbac.authorization.k8s.io", "roles"), \
        "the deploy identity must not bypass escalation prevention"
    problems = []
    for name, docs in renders.items():
        for role in (d for d in docs if d["kind"] == "Role"):
            for groups, resources, verbs, names in k8s_rules(role):
                for group in groups:
                    for resource in resources:
                        for resource_name in (names or {None}):
                            lacking = verbs - allowed(deploy, group, resource, resource_name)
                            if lacking:
                                problems.append(f"{name}: Role {role['metadata']['name']} grants {group}/{resource} "
                                                f"{sorted(lacking)}")
        for binding in (d for d in docs if d["kind"] == "RoleBinding"):
            ref = binding["roleRef"]
            if ref["kind"] != "Role":
                problems.append(f"{name}: RoleBinding {binding['metadata']['name']} binds {ref['kind']} {ref['name']}")
            elif ref["name"] not in {d["metadata"]["name"] for d in docs if d["kind"] == "Role"}:
                problems.append(f"{name}: RoleBinding {binding['metadata']['name']} binds a Role the chart lacks")
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_check_fails_when_the_role_misses_a_rendered_kind(renders, deploy):
    # Remove the Argo rule: WorkflowTemplates (which every render has) must then be reported.
    pruned = [r for r in deploy if "workflowtemplates" not in r[1]]
    assert HELM_VERBS - allowed(pruned, "argoproj.io", "workflowtemplates")
    assert ("argoproj.io", "WorkflowTemplate", "workflowtemplates") in rendered_kinds(renders)


def test_the_chart_renders_no_deployer_role_of_its_own(renders):
    for name, docs in renders.items():
        for doc in docs:
            if doc["kind"] in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}:
                subjects = doc.get("subjects", [])
                assert not any(s.get("kind") == "User" for s in subjects), \
                    f"{name}: {doc['kind']} {doc['metadata']['name']} grants a user: the deploy identity is terraform's"


def test_the_sensor_can_submit_a_workflow_from_the_workflow_template(renders):
    for name, docs in renders.items():
        sensors = [d for d in docs if d["kind"] == "Sensor"]
        if not sensors:
            continue
        roles = {d["metadata"]["name"]: k8s_rules(d) for d in docs if d["kind"] == "Role"}
        templates = {d["metadata"]["name"] for d in docs if d["kind"] == "WorkflowTemplate"}
        for sensor in sensors:
            account = sensor["spec"]["template"]["serviceAccountName"]
            assert account in {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}, (name, account)
            rules = [rule for b in docs if b["kind"] == "RoleBinding"
                     and any(s.get("kind") == "ServiceAccount" and s["name"] == account
                             and s.get("namespace", NAMESPACE) == NAMESPACE for s in b.get("subjects", []))
                     for rule in roles.get(b["roleRef"]["name"], [])]
            for trigger in sensor["spec"]["triggers"]:
                wf = trigger["template"].get("argoWorkflow")
                if not wf:
                    continue
                assert wf.get("operation", "submit") == "submit"
                template = wf["source"]["resource"]["spec"]["workflowTemplateRef"]["name"]
                assert template in templates, (name, template)
                assert "create" in allowed(rules, "argoproj.io", "workflows"), \
                    f"{name}: {account} cannot create Workflows"
                assert "get" in allowed(rules, "argoproj.io", "workflowtemplates", template), \
                    f"{name}: {account} cannot get WorkflowTemplate {template} (argo submit validates the ref)"


def _containers(template: dict) -> list[dict]:
    """The containers an Argo template runs its step in (container, script, or a containerSet's)."""
    return [c for c in (template.get("container"), template.get("script"),
                        *((template.get("containerSet") or {}).get("containers") or [])) if c]


def test_every_step_recording_its_image_can_read_its_own_pod(renders):
    """A step with the image env reads its own pod for the image digest (steps/core/podimage.py): the Role bound
    to the ServiceAccount its pod runs as (the template's, else the WorkflowTemplate's) must grant `get pods`.
    Without it the digest is silently missed (best effort), so only this test can catch a lost rule."""
    from sentimentops.steps.core.provenance import IMAGE_ENV

    checked = 0
    for name, docs in renders.items():
        roles = {d["metadata"]["name"]: k8s_rules(d) for d in docs if d["kind"] == "Role"}
        for workflow in (d for d in docs if d["kind"] == "WorkflowTemplate"):
            for template in workflow["spec"]["templates"]:
                if not any(e.get("name") == IMAGE_ENV for c in _containers(template) for e in c.get("env") or []):
                    continue
                account = template.get("serviceAccountName") or workflow["spec"].get("serviceAccountName")
                where = f"{name}: {workflow['metadata']['name']}/{template['name']} (ServiceAccount {account})"
                assert account, f"{where}: no ServiceAccount"
                rules = [rule for b in docs if b["kind"] == "RoleBinding"
                         and any(s.get("kind") == "ServiceAccount" and s["name"] == account
                                 and s.get("namespace", NAMESPACE) == NAMESPACE for s in b.get("subjects", []))
                         for rule in roles.get(b["roleRef"]["name"], [])]
                assert "get" in allowed(rules, "", "pods"), f"{where} cannot get its own pod"
                checked += 1
    assert checked, f"no WorkflowTemplate step sets {IMAGE_ENV}: the check checked nothing"
