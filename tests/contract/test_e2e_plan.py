"""The kind harness's plan, checked here where no cluster can run: `E2E_DRY_RUN=1 bash scripts/e2e/run.sh` prints every
command `make e2e` would run, and each is followed to the file that owns what it names: the platform versions
(charts/platform/versions.yaml, the same file terraform installs GKE from), the images the rendered templates and
the chart use (built by images.yml), the chart values (the InferenceService, the artifact repository), the template
and the parameters it declares, the data the gke profile validates, the drift webhook the EventSource serves.

The dry run itself must touch nothing: every cluster, container and network CLI on its PATH is a stub that records
being called, and none may be."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "scripts" / "e2e"
VERSIONS = REPO / "charts" / "platform" / "versions.yaml"
RENDERED = REPO / "charts" / "sentimentops" / "files" / "workflows"
VALUES_KIND = E2E / "values-kind.yaml"
TEMPLATE = "sentiment-training"
GUARDED = ("kind", "kubectl", "helm", "argo", "docker", "podman", "curl", "wget", "git")

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")


def run_plan(tmp: Path) -> tuple[subprocess.CompletedProcess, Path]:
    stubs, calls = tmp / "bin", tmp / "calls.log"
    stubs.mkdir()
    for name in GUARDED:
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 97\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "E2E_DRY_RUN": "1", "E2E_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(E2E / "run.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return proc, calls


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> list[list[str]]:
    proc, calls = run_plan(tmp_path_factory.mktemp("plan"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not calls.exists(), f"the dry run called: {calls.read_text()}"
    assert "e2e: plan complete" in proc.stdout
    commands = []
    for line in proc.stdout.splitlines():
        if line.startswith("+ "):
            text = line[2:].removesuffix(" &")
            text = re.sub(r"^([A-Z0-9_]+)=\$\((.*)\)$", r"\2", text)  # capture VAR=$(cmd)
            assert "$'" not in text, f"a command the test cannot parse: {line}"
            commands.append(shlex.split(text))
    assert commands
    return commands


def find(commands: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in commands if c[:len(prefix)] == list(prefix)]


def flag_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, a in enumerate(command[:-1]) if a == flag]


def option(command: list[str], name: str) -> str | None:
    """--name=value or --name value."""
    for i, arg in enumerate(command):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(command):
            return command[i + 1]
    return None


def versions() -> dict:
    return yaml.safe_load(VERSIONS.read_text())


def kind_values() -> dict:
    return yaml.safe_load(VALUES_KIND.read_text())


def render(values: dict) -> list[dict]:
    out = helm.Chart.load(REPO / "charts" / "sentimentops").render(values, name="sentimentops",
                                                                     namespace="sentimentops", is_install=True)
    return [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


def rendered_docs() -> list[dict]:
    return [d for p in sorted(RENDERED.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def template() -> dict:
    return next(d for d in rendered_docs() if d["kind"] == "WorkflowTemplate" and d["metadata"]["name"] == TEMPLATE)


def serving_values() -> dict:
    values = kind_values()
    values["inferenceService"] = {**values["inferenceService"], "storageUri": "pvc://mlflow-artifacts/1/m/artifacts",
                                  "modelVersion": "1"}
    return values


# ---- the platform ----------------------------------------------------------------------------------------------

def test_the_platform_is_installed_from_versions_yaml_in_its_order(plan):
    installs = [c for c in find(plan, "helm", "upgrade", "--install") if c[3] != "sentimentops"]
    wanted = [r for r in versions()["releases"] if "kind" in r.get("targets", ["kind"])]
    assert [c[3] for c in installs] == [r["name"] for r in wanted]
    for command, rel in zip(installs, wanted, strict=True):
        assert option(command, "namespace") == rel["namespace"], rel["name"]
        repo = rel["repository"] or ""
        if repo.startswith("oci://"):
            assert command[4] == f"{repo.rstrip('/')}/{rel['chart']}" and option(command, "repo") is None
        elif repo:
            assert (command[4], option(command, "repo")) == (rel["chart"], repo)
        else:
            assert command[4] == f"charts/platform/{rel['chart']}"
        version = option(command, "version") or next(
            v.split("=", 1)[1] for v in flag_values(command, "--set-string") if v.startswith("version="))
        assert version == str(rel["version"]), rel["name"]
        files = flag_values(command, "-f")
        if rel.get("values"):
            assert files[0] == f"charts/platform/values/{rel['values']}", rel["name"]
        assert all(f.startswith(("charts/platform/values/", "scripts/e2e/platform/")) and (REPO / f).is_file()
                   for f in files)


def _quantity(text: str) -> float:
    """A Kubernetes quantity as a number (cores or bytes): 500m, 4, 1Gi, 16Gi."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if str(text).endswith(suffix):
            return float(str(text)[: -len(suffix)]) * factor
    return float(text)


def test_every_step_pod_fits_the_one_kind_node_of_a_github_runner():
    """The templates size train and evaluate for GKE's pools (4 CPU/16Gi, 2 CPU/8Gi); ubuntu-latest has 4 vCPU and
    16 GB, shared with the platform: the kind workflow defaults must lower every step's requests, or train stays
    Pending until its deadline."""
    runner_cpu, runner_memory = 4, 16e9
    rendered = [yaml.safe_load(p.read_text()) for p in RENDERED.glob("*.yaml")]
    asked = [t["container"]["resources"]["requests"] for d in rendered if d["kind"] == "WorkflowTemplate"
             for t in d["spec"]["templates"] if "container" in t and t["container"].get("resources")]
    assert any(_quantity(r["memory"]) > runner_memory / 2 for r in asked), "the templates no longer ask for much"
    defaults = yaml.safe_load((E2E / "platform" / "argo-workflows.yaml").read_text())["controller"]["workflowDefaults"]
    patch = yaml.safe_load(defaults["spec"]["podSpecPatch"])
    (main,) = [c for c in patch["containers"] if c["name"] == "main"]
    requests = main["resources"]["requests"]
    assert _quantity(requests["cpu"]) <= runner_cpu / 4 and _quantity(requests["memory"]) <= runner_memory / 8, \
        requests


def test_kind_overrides_name_real_releases_and_stay_small():
    names = {r["name"] for r in versions()["releases"]}
    for path in (E2E / "platform").glob("*.yaml"):
        assert path.stem in names, path.name
        assert yaml.safe_load(path.read_text()), path.name


def test_kserve_runs_standard_mode_without_knative_on_kind(plan):
    install = next(c for c in find(plan, "helm", "upgrade", "--install") if c[3] == "kserve")
    merged: dict = {}
    for f in flag_values(install, "-f"):
        merged = {**merged, **yaml.safe_load((REPO / f).read_text())}
    assert merged["kserve"]["controller"]["deploymentMode"] in ("Standard", "RawDeployment")
    assert kind_values()["inferenceService"]["deploymentMode"] == "RawDeployment"
    assert not [c for c in find(plan, "helm", "upgrade", "--install") if "knative" in c[3] or "istio" in c[3]]


# ---- images ----------------------------------------------------------------------------------------------------

def test_every_image_the_templates_and_the_chart_use_is_built_and_loaded(plan):
    pattern = re.compile(r"/sentimentops-([a-z0-9-]+):")
    used = set(pattern.findall("\n".join(p.read_text() for p in RENDERED.glob("*.yaml"))))
    used |= set(pattern.findall(yaml.safe_dump_all(render(serving_values()))))
    assert {"rollout", "serve", "mlflow", "train"} <= used
    images_yml = yaml.safe_load((REPO / ".github" / "workflows" / "images.yml").read_text())
    dockerfiles = {m["image"]: m["file"] for m in images_yml["jobs"]["stages"]["strategy"]["matrix"]["include"]}
    values = kind_values()["image"]
    ref = f"{values['registry']}/sentimentops-{{}}:{values['tag']}"
    builds = {option(c, "file") or flag_values(c, "-f")[0]: flag_values(c, "-t")[0]
              for c in plan if c[:2] in (["docker", "build"], ["podman", "build"])}
    loaded = {c[-3] for c in find(plan, "kind", "load", "docker-image")}
    for image in used:
        assert builds.get(dockerfiles[image]) == ref.format(image), image
        assert ref.format(image) in loaded, image
    first = next(c for c in plan if c[:2] == ["docker", "build"])
    assert flag_values(first, "-f") == ["images/base.Dockerfile"], "the base first: every stage image is FROM it"
    assert all(f"BASE_IMAGE={ref.format('base')}" in flag_values(c, "--build-arg")
               for c in plan if c[:2] == ["docker", "build"])


def test_every_image_is_built_with_this_commit_as_git_sha(plan):
    # The images bake GIT_SHA in as SENTIMENTOPS_GIT_SHA (.git is not in the build context): without it every step in
    # the cluster records git_sha `unknown`. The dry run shows the capture (`GIT_SHA=$(git rev-parse HEAD)`, whose
    # value it prints as <GIT_SHA>) before the first build, and that value passed to every build.
    builds = [i for i, c in enumerate(plan) if c[:2] == ["docker", "build"]]
    assert builds
    assert ["git", "rev-parse", "HEAD"] in plan[:builds[0]], "the commit is read before the first build"
    for i in builds:
        assert "GIT_SHA=<GIT_SHA>" in flag_values(plan[i], "--build-arg"), plan[i]


# ---- the chart -------------------------------------------------------------------------------------------------

def test_the_chart_is_installed_with_the_kind_values_and_then_serves_the_first_version(plan):
    installs = [c for c in find(plan, "helm", "upgrade", "--install") if c[3] == "sentimentops"]
    assert len(installs) == 2
    for command in installs:
        assert command[4] == "charts/sentimentops" and "scripts/e2e/values-kind.yaml" in flag_values(command, "-f")
        assert option(command, "namespace") == "sentimentops" and "--wait" in command
    first, second = installs
    assert kind_values()["inferenceService"]["enabled"] is True
    # No model exists before the first training: without a storage URI the chart renders no InferenceService.
    assert not any(v.startswith("inferenceService.") for v in flag_values(first, "--set-string"))
    assert not [d for d in render(kind_values()) if d["kind"] == "InferenceService"]
    # The second install serves what the first training registered: the version's storage_uri tag.
    sets = dict(v.split("=", 1) for v in flag_values(second, "--set-string"))
    assert sets["inferenceService.storageUri"] == "<URI1>" and sets["inferenceService.modelVersion"] == "<V1>"
    queries = [c for c in find(plan, "kubectl", "-n", "sentimentops", "exec", "deploy/mlflow") if c[-2:] ==
               ["challenger", "storage_uri"]]
    assert queries, "URI1 comes from the registered version's storage_uri tag"
    isvc = [d for d in render(serving_values()) if d["kind"] == "InferenceService"]
    assert len(isvc) == 1
    assert isvc[0]["spec"]["predictor"]["model"]["storageUri"] == "pvc://mlflow-artifacts/1/m/artifacts"


def test_the_artifact_repository_is_minio_by_a_name_that_resolves_from_the_release_namespace(plan):
    docs = render(kind_values())
    repo = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "artifact-repositories")
    key = repo["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"]
    s3 = yaml.safe_load(repo["data"][key])["s3"]
    host = s3["endpoint"].split(":")[0]
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", host)
    assert match, f"{host}: not a fully qualified Service name"
    service, namespace = match.groups()
    argo = versions()["tools"]["argo"]
    minio = find(plan, "kubectl", "apply", "-n", namespace, "-k")
    assert minio and minio[0][5] == f"https://github.com/argoproj/argo-workflows/manifests/quick-start/base/{service}" \
        f"?ref={argo}", "Argo's quick-start MinIO, at the Argo version, in the namespace the endpoint names"
    secret = s3["accessKeySecret"]["name"]
    applied = find(plan, "kubectl", "apply", "-n", "sentimentops", "-f")
    assert any(c[5].endswith(f"/{argo}/manifests/quick-start/base/minio/{secret}-secret.yaml") for c in applied)


# ---- the workflows ---------------------------------------------------------------------------------------------

def submits(plan: list[list[str]]) -> list[dict[str, str]]:
    out = []
    for command in find(plan, "argo", "-n", "sentimentops", "submit"):
        assert option(command, "from") == f"workflowtemplate/{TEMPLATE}"
        out.append(dict(v.split("=", 1) for v in flag_values(command, "-p")))
    return out


def test_submits_use_the_stable_template_and_only_declared_parameters(plan):
    declared = {p["name"]: p.get("value") for p in template()["spec"]["arguments"]["parameters"]}
    runs = submits(plan)
    assert len(runs) == 2
    for params in runs:
        assert set(params) <= set(declared), set(params) - set(declared)
        assert params["profile"] == "gke"
    first, second = runs
    assert first["rollout"] == "skip", "nothing serves yet: the first model cannot be rolled out"
    assert second["rollout"] == "canary"
    seconds = {"s": 1, "m": 60, "h": 3600}
    for name in ("rollout-soak", "rollout-interval"):
        value, default = second[name], declared[name]
        assert int(value[:-1]) * seconds[value[-1]] < int(default[:-1]) * seconds[default[-1]], name
    assert find(plan, "kubectl", "-n", "sentimentops", "get", "workflowtemplate", TEMPLATE)


def test_the_data_passes_validation_under_the_profile_it_uses(plan, monkeypatch):
    """The split sizes come from the real ingest code; the minimum from the profile's validate settings."""
    import pandas as pd

    from sentimentops.steps.core.config import load_settings
    from sentimentops.steps.ingest import IngestSettings, make_splits, read_demo
    from sentimentops.steps.validate.checks import ValidateSettings

    for params in submits(plan):
        monkeypatch.setenv("SENTIMENTOPS_PROFILE", params["profile"])
        minimum = load_settings(ValidateSettings).min_rows
        ingest = IngestSettings(**{k.replace("-", "_"): v for k, v in params.items()
                                   if k in ("source", "sample-size", "test-size", "val-fraction", "seed")})
        if ingest.source == "demo":
            raw = read_demo()
        else:
            assert ingest.source == "hf:stanfordnlp/imdb", ingest.source
            # IMDB's published splits: 25,000 train and 25,000 test reviews, half of each positive.
            raw = {s: pd.DataFrame({"text": [f"{s} review {i}" for i in range(25_000)], "label": [i % 2 for i in
                                    range(25_000)]}) for s in ("train", "test")}
        for name, frame in make_splits(raw, ingest).items():
            assert len(frame) >= minimum, f"{params['reason']}: {name} has {len(frame)} rows < min_rows {minimum}"


def test_the_canary_gets_traffic_through_the_services_kserve_creates(plan):
    from sentimentops.steps.rollout.kserve import CANARY_NAME

    _, second = submits(plan)
    pod = next(c for c in find(plan, "kubectl", "-n", "sentimentops", "run", "e2e-load"))
    container = yaml.safe_load(option(pod, "overrides"))["spec"]["containers"][0]
    _, script, stable, canary, percent, rps, _ = container["command"]
    assert script == "/e2e/load.py" and find(plan, "kubectl", "-n", "sentimentops", "create", "configmap", "e2e-load")
    assert stable.startswith("http://sentiment-predictor.sentimentops.svc.cluster.local/")
    assert canary.startswith(f"http://sentiment-{CANARY_NAME}-predictor.sentimentops.svc.cluster.local/")
    assert percent == second["rollout-canary-percent"]
    soak = int(second["rollout-soak"][:-1]) * {"s": 1, "m": 60}[second["rollout-soak"][-1]]
    from sentimentops.steps.rollout.policy import RolloutPolicy

    assert float(rps) * soak * float(percent) / 100 >= 2 * RolloutPolicy().min_canary_requests


def test_the_drift_post_reaches_the_eventsource_the_chart_installs(plan):
    source = next(d for d in render(kind_values()) if d["kind"] == "EventSource")
    hook = next(iter(source["spec"]["webhook"].values()))
    forward = next(c for c in find(plan, "kubectl", "-n", "sentimentops", "port-forward")
                   if c[4].startswith("svc/sentiment-retrain"))
    # Argo Events names an EventSource's Service <name>-eventsource-svc.
    assert forward[4] == f"svc/{source['metadata']['name']}-eventsource-svc"
    local = forward[5].split(":")[0]
    post = next(c for c in find(plan, "curl") if "POST" in c)
    assert post[post.index("POST") + 1] == f"http://127.0.0.1:{local}{hook['endpoint']}"
    assert forward[5].split(":")[1] == str(hook["port"])
    assert any(h.startswith("@") for h in flag_values(post, "-H")), "the bearer token comes from a file"
    assert '"reason"' in flag_values(post, "-d")[0], "the Sensor's filter passes a body with a reason"
    assert find(plan, "argo", "-n", "sentimentops", "stop")


def test_a_broken_repository_stops_the_plan_with_a_message(tmp_path, monkeypatch):
    sys.path.insert(0, str(E2E))
    try:
        import plan as e2e_plan
    finally:
        sys.path.remove(str(E2E))
    assert e2e_plan.main(["check-params", TEMPLATE, "no-such-parameter"]) == 2
    assert e2e_plan.main(["check-params", "no-such-template"]) == 2
    assert e2e_plan.main(["bogus"]) == 2
    monkeypatch.setattr(e2e_plan, "VERSIONS", tmp_path / "versions.yaml")
    (tmp_path / "versions.yaml").write_text("releases: [{name: x}]\ntools: {}\n")
    with pytest.raises(e2e_plan.PlanError, match="lacks namespace, chart, version"):
        e2e_plan.releases()
