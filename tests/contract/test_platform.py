"""charts/platform/: the platform releases pinned in one file (versions.yaml), their values files, the local
KnativeServing chart, and terraform/platform.tf installing exactly those releases, in that order, with no version
written a second time. Also the wiring between the platform and charts/sentimentops: the release label Prometheus
selects by, the Prometheus URL the rollout queries, the Secrets Alertmanager mounts, the EventBus' JetStream version."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLATFORM = REPO / "charts" / "platform"
VERSIONS = PLATFORM / "versions.yaml"
TF = REPO / "terraform"
CHART_VALUES = REPO / "charts" / "sentimentops" / "values.yaml"
ALERTMANAGER = REPO / "charts" / "sentimentops" / "files" / "monitoring" / "alertmanager" / "alertmanager.yaml"
REQUIRED = ("name", "namespace", "repository", "chart", "version")
TARGETS = {"gke", "kind"}


def doc() -> dict:
    return yaml.safe_load(VERSIONS.read_text())


def releases(target: str | None = None) -> list[dict]:
    return [r for r in doc()["releases"] if target is None or target in r.get("targets", sorted(TARGETS))]


def by_name() -> dict[str, dict]:
    return {r["name"]: r for r in releases()}


def values_of(name: str) -> dict:
    release = by_name()[name]
    return yaml.safe_load((PLATFORM / "values" / release["values"]).read_text()) if release.get("values") else {}


def test_versions_yaml_lists_every_release_with_a_pinned_version():
    rels = releases()
    assert len(rels) >= 5
    names = [r["name"] for r in rels]
    assert len(names) == len(set(names)), names
    for r in rels:
        assert set(r) <= set(REQUIRED) | {"values", "targets"}, r
        for key in REQUIRED:
            assert isinstance(r.get(key), str), (r["name"], key)
        assert r["name"] and r["namespace"] and r["chart"], r
        # a pin, not a range: x.y.z with an optional v
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", r["version"]), r
        assert r["repository"] == "" or re.match(r"(https|oci)://", r["repository"]), r
        assert set(r.get("targets", TARGETS)) <= TARGETS, r
    charts = {(r["repository"], r["chart"]) for r in rels}
    # The five the issue names, and KServe's Knative-mode dependencies.
    for needed in [("https://charts.jetstack.io", "cert-manager"),
                   ("https://prometheus-community.github.io/helm-charts", "kube-prometheus-stack"),
                   ("https://argoproj.github.io/argo-helm", "argo-workflows"),
                   ("https://argoproj.github.io/argo-helm", "argo-events"),
                   ("oci://ghcr.io/kserve/charts", "kserve-crd"), ("oci://ghcr.io/kserve/charts", "kserve-resources"),
                   ("https://knative.github.io/operator", "knative-operator")]:
        assert needed in charts, needed
    tools = doc()["tools"]
    assert set(tools) == {"kind", "helm", "kubectl", "argo"}
    assert all(re.fullmatch(r"v\d+\.\d+\.\d+", v) for v in tools.values()), tools


def test_values_files_exist_are_yaml_mappings_and_none_is_orphaned():
    named = {r["values"] for r in releases() if r.get("values")}
    on_disk = {p.name for p in (PLATFORM / "values").glob("*")}
    assert named == on_disk, f"missing: {named - on_disk}, unused: {on_disk - named}"
    for name in named:
        assert isinstance(yaml.safe_load((PLATFORM / "values" / name).read_text()), dict), name


def test_install_order_puts_every_dependency_first():
    order = [r["name"] for r in releases()]

    def before(a: str, b: str) -> None:
        assert order.index(a) < order.index(b), f"{a} must be installed before {b}"

    # argo-helm renders the controller's ServiceMonitor only if monitoring.coreos.com/v1 is already served.
    before("kube-prometheus-stack", "argo-workflows")
    before("cert-manager", "kserve")
    before("kserve-crd", "kserve")
    for dep in ("istio-base", "istiod", "istio-ingressgateway", "knative-operator", "knative-serving"):
        before(dep, "kserve")
    before("knative-operator", "knative-serving")
    before("istio-base", "istiod")


def test_local_charts_render_the_pinned_version():
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
    local = [r for r in releases() if r["repository"] == ""]
    assert local, "KnativeServing is a local chart"
    for r in local:
        values = {**values_of(r["name"]), "version": r["version"]}
        out = helm.Chart.load(PLATFORM / r["chart"]).render(values, name=r["name"], namespace=r["namespace"],
                                                             is_install=True)
        docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
        (serving,) = [d for d in docs if d["kind"] == "KnativeServing"]
        assert serving["spec"]["version"] == r["version"]
        assert serving["metadata"]["namespace"] == r["namespace"]
    # The operator installs the Serving of its own release line (KServe's installer pins them together).
    assert by_name()["knative-operator"]["version"] == "v" + by_name()["knative-serving"]["version"]


def test_local_chart_refuses_a_missing_version():
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
    with pytest.raises(Exception, match="version"):
        helm.Chart.load(PLATFORM / "knative-serving").render({}, name="knative-serving", namespace="knative-serving",
                                                             is_install=True)


# ---- terraform/platform.tf --------------------------------------------------------------------------------------

def tf_text() -> str:
    return "\n".join(p.read_text() for p in sorted(TF.glob("*.tf")))


def helm_releases() -> dict[str, str]:
    """terraform resource name -> its block's text (platform.tf, one helm_release per release)."""
    text = (TF / "platform.tf").read_text()
    blocks = re.findall(r'^resource "helm_release" "(\w+)" \{\n(.*?)^\}', text, re.MULTILINE | re.DOTALL)
    return dict(blocks)


def release_key(block: str) -> str:
    (key,) = set(re.findall(r'local\.platform\["([^"]+)"\]', block))
    return key


def test_terraform_installs_exactly_the_gke_releases_in_order_from_versions_yaml():
    tf_releases = helm_releases()
    gke = [r["name"] for r in releases("gke")]
    keys = {res: release_key(block) for res, block in tf_releases.items()}
    assert sorted(keys.values()) == sorted(gke), "each gke release once, each helm_release from versions.yaml"
    by_key = {key: res for res, key in keys.items()}
    for res, block in tf_releases.items():
        key = keys[res]
        for attr in ("name", "namespace"):
            assert re.search(rf'^\s*{attr}\s*=\s*local\.platform\["{key}"\]\.{attr}$', block, re.MULTILINE), (res, attr)
        release = by_name()[key]
        if release["repository"]:
            for attr in ("repository", "chart", "version"):
                assert re.search(rf'^\s*{attr}\s*=\s*local\.platform\["{key}"\]\.{attr}$', block, re.MULTILINE), (res, attr)
        else:  # a chart of this folder: its version reaches the chart as a value
            assert "local.platform_dir" in block and f'local.platform["{key}"].version' in block, res
        assert f'local.platform_values["{key}"]' in block, res
    # Each release waits for the one listed before it.
    for previous, current in itertools.pairwise(gke):
        deps = re.search(r"depends_on\s*=\s*\[(.*?)\]", tf_releases[by_key[current]], re.DOTALL).group(1)
        assert f"helm_release.{by_key[previous]}" in deps, f"{current} must depend on {previous}"


def test_no_version_is_written_twice():
    text = tf_text()
    for r in releases():
        assert not re.search(rf'"{re.escape(r["version"])}"', text), f'{r["name"]} {r["version"]} is written in terraform'
    assert 'file("${local.platform_dir}/versions.yaml")' in text
    assert (TF / ".." / "charts" / "platform" / "versions.yaml").resolve() == VERSIONS.resolve()


def test_the_kind_harness_reads_the_same_versions():
    run_sh = (REPO / "scripts" / "e2e" / "run.sh").read_text()
    assert "charts/platform/versions.yaml" in run_sh or "versions.yaml" in run_sh, \
        "scripts/e2e/run.sh must install the platform from charts/platform/versions.yaml"
    code = "\n".join(line.split("#")[0] for line in run_sh.splitlines())
    for r in releases("kind"):
        assert r["version"] not in code, f'scripts/e2e/run.sh pins {r["name"]} {r["version"]} a second time'


# ---- wiring between the platform and charts/sentimentops --------------------------------------------------------

def test_prometheus_selects_the_charts_monitors_and_argos_controller_metrics():
    kps = by_name()["kube-prometheus-stack"]
    chart = yaml.safe_load(CHART_VALUES.read_text())["monitoring"]
    # kube-prometheus-stack selects ServiceMonitors/PrometheusRules labelled release=<its release name>.
    assert chart["serviceMonitor"]["labels"]["release"] == kps["name"]
    assert chart["prometheusRules"]["labels"]["release"] == kps["name"]
    kps_values = values_of("kube-prometheus-stack")
    for key in ("serviceMonitorSelectorNilUsesHelmValues", "ruleSelectorNilUsesHelmValues"):
        assert kps_values.get("prometheus", {}).get("prometheusSpec", {}).get(key, True) is True
    # The rollout's default Prometheus URL is the operator's Service in the stack's namespace.
    host = re.match(r"http://([^:/]+)", chart["prometheus"]["url"]).group(1)
    assert host == f"prometheus-operated.{kps['namespace']}.svc"
    # The workflow metrics (contract: argo_workflows_sentimentops_training_*) are scraped from the controller.
    argo = values_of("argo-workflows")["controller"]
    assert argo["metricsConfig"]["enabled"] is True
    assert argo["serviceMonitor"]["enabled"] is True
    assert argo["serviceMonitor"]["additionalLabels"]["release"] == kps["name"]


def test_alertmanager_mounts_every_secret_its_config_reads():
    config_text = ALERTMANAGER.read_text()
    read = set(re.findall(r"/etc/alertmanager/secrets/([a-z0-9-]+)/", config_text))
    assert read == {"sentiment-alertmanager-slack", "sentiment-retrain-webhook"}
    mounted = set(values_of("kube-prometheus-stack")["alertmanager"]["alertmanagerSpec"]["secrets"])
    assert read == mounted
    # terraform hands the repository's config and templates to the stack (no copy of the routes anywhere else).
    platform_tf = (TF / "platform.tf").read_text()
    assert "alertmanager.yaml" in platform_tf and "*.tmpl" in platform_tf
    assert "config" in platform_tf and "templateFiles" in platform_tf


def test_the_event_bus_names_a_jetstream_version_argo_events_is_configured_with():
    chart = yaml.safe_load(CHART_VALUES.read_text())
    wanted = str(chart["eventBus"]["jetstream"]["version"])
    offered = [str(v["version"]) for v in values_of("argo-events")["configs"]["jetstream"]["versions"]]
    assert wanted in offered, f"EventBus JetStream {wanted} is not one of {offered}"


def test_kserve_runs_in_the_mode_the_gke_values_use():
    gke = yaml.safe_load((REPO / "charts" / "sentimentops" / "values-gke.yaml").read_text())
    mode = gke["inferenceService"]["deploymentMode"]
    controller = values_of("kserve")["kserve"]["controller"]["deploymentMode"]
    # KServe v0.20 renamed Serverless -> Knative (the old name is a deprecated alias, pkg/constants LegacyServerless).
    assert {mode, controller} <= {"Serverless", "Knative"}, (mode, controller)


def _walk(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i))
    else:
        yield path, node


def test_knative_enables_the_pod_spec_features_the_serverless_predictor_uses():
    """KServe (Knative mode) copies the predictor's pod spec into a Knative Service, and Knative's webhook refuses
    env fieldRef and a pod securityContext unless their feature flags are on (both ship disabled): a predictor that
    uses either never becomes a Knative Service. What the GKE render uses, the KnativeServing must enable."""
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
    chart = REPO / "charts" / "sentimentops"
    gke = yaml.safe_load((chart / "values-gke.yaml").read_text())
    gke["inferenceService"] = {**gke["inferenceService"], "storageUri": "gs://bucket/artifacts/1", "modelVersion": "1"}
    out = helm.Chart.load(chart).render(gke, name="sentimentops", namespace="sentimentops", is_install=True)
    docs = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    serving = [d for d in docs if d["kind"] in ("ServingRuntime", "InferenceService")]
    assert {d["kind"] for d in serving} == {"ServingRuntime", "InferenceService"}
    used = set()
    for d in serving:
        for path, _ in _walk(d["spec"]):
            if "fieldRef" in path:
                used.add("kubernetes.podspec-fieldref")
        isvc_context = d["kind"] == "InferenceService" and d["spec"]["predictor"].get("securityContext")
        runtime_context = d["kind"] == "ServingRuntime" and d["spec"].get("securityContext")
        if isvc_context or runtime_context:
            used.add("kubernetes.podspec-securitycontext")
    assert used == {"kubernetes.podspec-fieldref", "kubernetes.podspec-securitycontext"}, used  # what it uses today
    r = by_name()["knative-serving"]
    rendered = helm.Chart.load(PLATFORM / r["chart"]).render({**values_of(r["name"]), "version": r["version"]},
                                                            name=r["name"], namespace=r["namespace"], is_install=True)
    (knative,) = [d for text in rendered.values() for d in yaml.safe_load_all(text) if d and d["kind"] == "KnativeServing"]
    features = knative["spec"]["config"].get("features", {})
    assert {flag for flag in used if features.get(flag) != "enabled"} == set(), features
