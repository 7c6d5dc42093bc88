"""Issue 13, data you can get back: the commit (git_sha), the committed DVC config and its one source, dvc-gs in the
version extra, the image digest read from the pod's status, and `sentimentops lineage` / `data pull` on a real
MLflow (sqlite) and a real DVC local remote."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from sentimentops.steps.core import podimage
from sentimentops.steps.core.config import load_settings
from sentimentops.steps.core.errors import UsageError
from sentimentops.steps.core.manifests import git_sha, hash_dir, read_manifest
from sentimentops.steps.core.snapshots import (
    CHECKOUT_CONFIG,
    DVC_CONFIG_ENV,
    committed_remotes,
    open_workspace,
)
from sentimentops.steps.lineage.gather import response_version
from sentimentops.steps.version import VersionSettings

REPO = Path(__file__).resolve().parents[2]
SHA = re.compile(r"[0-9a-f]{40}")


def repo_head() -> str | None:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


# ------------------------------------------------------------------------------------------------ git_sha
def test_git_sha_env_wins_and_empty_is_unset(monkeypatch):
    monkeypatch.setenv("SENTIMENTOPS_GIT_SHA", "f" * 40)
    assert git_sha() == "f" * 40
    monkeypatch.setenv("SENTIMENTOPS_GIT_SHA", "")  # the images' default build argument: unset, not ""
    assert git_sha() == (repo_head() or "unknown")


@pytest.mark.skipif(repo_head() is None, reason="the package is not in a git checkout")
def test_git_sha_is_the_package_checkout_head_from_any_cwd(monkeypatch, tmp_path):
    """The local runner runs steps from run folders: the cwd must not decide (it once would have named no repo)."""
    monkeypatch.delenv("SENTIMENTOPS_GIT_SHA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert SHA.fullmatch(git_sha()) and git_sha() == repo_head()


def test_git_sha_outside_git_is_unknown(monkeypatch, tmp_path):
    """The same module, copied outside any checkout (an installed wheel): no commit to name."""
    copy = tmp_path / "pkg" / "provenance.py"
    copy.parent.mkdir()
    shutil.copy2(REPO / "steps" / "core" / "provenance.py", copy)
    spec = importlib.util.spec_from_file_location("provenance_copy", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("SENTIMENTOPS_GIT_SHA", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git must not find a repository above tmp
    monkeypatch.chdir(REPO)  # a cwd inside the checkout must not leak in either
    assert module.git_sha() == "unknown"


# ------------------------------------------------------------------------------------------------ .dvc/config
def test_committed_dvc_config_agrees_with_the_profiles_and_the_chart(monkeypatch):
    """The local remote is the local profile's default (home `.sentimentops` under the repository root, as DVC
    resolves a relative URL: from .dvc/); analytics off. No cluster remote: its bucket differs per installation
    (the chart's dvc.remote, from terraform), and a project id is written only in values and terraform variables;
    each registered version names its own remote (tag dataset.dvc_remote), which `data pull` uses."""
    from dvc.repo import Repo

    monkeypatch.chdir(REPO)
    local = load_settings(VersionSettings, env={"SENTIMENTOPS_PROFILE": "local"})
    repo = Repo(str(REPO))
    assert repo.config["core"]["analytics"] is False
    assert repo.config["core"]["remote"] == "local"
    assert repo.config["remote"]["local"]["url"] == local.remote
    assert set(committed_remotes()) == {"local"}


def test_dvc_gitignore_is_the_one_dvc_writes(tmp_path):
    from dvc.repo import Repo

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    Repo.init(str(tmp_path))
    assert (REPO / ".dvc/.gitignore").read_text() == (tmp_path / ".dvc/.gitignore").read_text()


def test_workspace_takes_core_from_the_committed_config(tmp_path, monkeypatch):
    repo = open_workspace(tmp_path / "ws", str(tmp_path / "remote"))
    assert repo.config["core"]["analytics"] is False and repo.config["core"]["no_scm"] is True
    assert repo.config["remote"][repo.config["core"]["remote"]]["url"] == str(tmp_path / "remote")
    # One source: another committed config (here a copy that also turns update checks off) seeds another core.
    other = tmp_path / "config"
    other.write_text(CHECKOUT_CONFIG.read_text().replace("[core]\n", "[core]\n    check_update = false\n"))
    monkeypatch.setenv(DVC_CONFIG_ENV, str(other))
    assert open_workspace(tmp_path / "ws2", str(tmp_path / "remote")).config["core"]["check_update"] is False
    monkeypatch.setenv(DVC_CONFIG_ENV, str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=DVC_CONFIG_ENV):
        open_workspace(tmp_path / "ws3", str(tmp_path / "remote"))


def test_version_extra_carries_dvc_gs_pinned_like_the_image_constraints():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["version"]
    (pin,) = [r for r in extra if r.startswith("dvc-gs")]
    constraints = (REPO / "images/constraints.txt").read_text().splitlines()
    assert pin in constraints, "the image installs what the suite ran with"
    import dvc_gs  # noqa: F401  the venv has it: the gs:// remote's filesystem
    from dvc.fs import get_cloud_fs

    assert get_cloud_fs({}, url="gs://bucket/remote")[0].__module__.startswith("dvc_gs")  # the class


# ------------------------------------------------------------------------------------------------ image digest
DIGEST = "sha256:" + "ab" * 32
POD = {"metadata": {"name": "train-pod"}, "status": {"containerStatuses": [
    {"name": "wait", "image": "quay.io/argoproj/argoexec:v3.7.1", "imageID": "quay.io/argoproj/argoexec@sha256:"
     + "00" * 32},
    {"name": "main", "image": "reg/sentimentops-train:0.1.0", "imageID": f"reg/sentimentops-train@{DIGEST}"}]}}


def test_image_digest_is_read_from_the_container_running_the_ref():
    assert podimage.image_digest(POD, "reg/sentimentops-train:0.1.0") == DIGEST
    assert podimage.image_digest(POD, "other:1") == DIGEST  # else Argo's main container
    assert podimage.image_digest({"status": {"containerStatuses": [{"name": "main", "imageID": ""}]}}, "x") is None
    assert podimage.image_digest({}, "x") is None
    assert podimage.with_digest("reg/a:1", DIGEST) == f"reg/a:1@{DIGEST}"
    assert podimage.with_digest(f"reg/a@{DIGEST}", DIGEST) == f"reg/a@{DIGEST}"
    assert podimage.with_digest("reg/a:1", None) == "reg/a:1"


@pytest.fixture
def api_server():
    """A real HTTP server on 127.0.0.1 standing in for the API server's pod endpoint."""
    state = {"status": 200, "delay": 0.0, "seen": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state["seen"].append((self.path, self.headers.get("Authorization")))
            time.sleep(state["delay"])
            body = json.dumps(POD).encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except BrokenPipeError:  # the client gave up first (the timeout case): what the test wants
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_pinned_image_asks_for_its_own_pod_and_never_fails(api_server, tmp_path, monkeypatch):
    api, state = api_server
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "namespace").write_text("sentimentops\n")
    ref = "reg/sentimentops-train:0.1.0"
    monkeypatch.delenv(podimage.POD_NAME_ENV, raising=False)
    assert podimage.pinned_image(ref, api=api, sa_dir=tmp_path) == ref and not state["seen"]  # not in a pod
    monkeypatch.setenv("HOSTNAME", "train-pod")  # what Kubernetes sets in every container: the pod's name
    assert podimage.pinned_image(ref, api=api, sa_dir=tmp_path) == f"{ref}@{DIGEST}"
    assert state["seen"] == [("/api/v1/namespaces/sentimentops/pods/train-pod", "Bearer tok")]
    state["status"] = 403  # no `get pods` in the Role: the ref, no failure
    assert podimage.pinned_image(ref, api=api, sa_dir=tmp_path) == ref
    state["status"], state["delay"] = 200, 1.0  # a slow API: the timeout, then the ref
    started = time.monotonic()
    assert podimage.pinned_image(ref, api=api, sa_dir=tmp_path, timeout=0.2) == ref
    assert time.monotonic() - started < 1.0


# ------------------------------------------------------------------------------------------------ responses
@pytest.mark.parametrize(("answer", "expected"), [
    ({"model_name": "sentiment", "model_version": "3", "outputs": []}, ("sentiment", "3")),
    ({"predictions": [{"label": "positive", "model_name": "sentiment", "model_version": "2"}] * 2}, ("sentiment", "2")),
    ({"explanations": [{"model_name": "sentiment", "model_version": "5"}]}, ("sentiment", "5")),
])
def test_response_version_reads_v1_v2_and_explain_answers(answer, expected):
    assert response_version(json.dumps(answer)) == expected


@pytest.mark.parametrize("text", ["not json", "{}", json.dumps({"predictions": [{"model_version": "1"},
                                                                                {"model_version": "2"}]})])
def test_response_without_one_version_is_a_usage_error(text):
    with pytest.raises(UsageError):
        response_version(text)


# ------------------------------------------------------------------------------------------------ end to end
def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for split, n in (("train", 6), ("validation", 2), ("test", 3)):
        pd.DataFrame({"text": [f"{split} review {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
                     ).to_parquet(folder / f"{split}.parquet", index=False)
    return folder


@pytest.fixture
def registered(home, tmp_path):
    """A version step's snapshot, a run holding it (core.tracking.log_dataset, as train logs it) and a registered
    version with the tags register puts on it."""
    from sentimentops.steps.core.config import CommonSettings
    from sentimentops.steps.core.tracking import configure, log_dataset, mlflow_run
    from sentimentops.steps.version import main as version_main

    dataset = write_dataset(tmp_path / "ds")
    version_out = tmp_path / "version"
    assert version_main(["--dataset", str(dataset), "--out", str(version_out)]) == 0
    manifest = read_manifest(version_out)
    settings = load_settings(CommonSettings)
    client = configure(settings)
    with mlflow_run(settings) as run:
        rows = {"test": 3, "train": 6, "validation": 2}
        assert log_dataset(run.info.run_id, version_out / "dataset.dvc", manifest.refs.dvc_remote, "demo", rows)
        assert not log_dataset(run.info.run_id, version_out / "dataset.dvc", manifest.refs.dvc_remote, "demo", rows)
        import mlflow

        mlflow.log_metric("test_accuracy", 0.75)
    client.create_registered_model("sentiment")
    client.create_model_version("sentiment", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags={
        "git_sha": "a" * 40, "dataset.dvc_md5": manifest.refs.dvc_md5, "dataset.dvc_remote": manifest.refs.dvc_remote,
        "image.train": f"reg/sentimentops-train:0.1.0@{DIGEST}"})
    return {"client": client, "run_id": run.info.run_id, "dataset": dataset, "md5": manifest.refs.dvc_md5,
            "remote": manifest.refs.dvc_remote, "settings": settings}


def test_the_dataset_input_is_logged_once_with_the_dvc_md5(registered):
    run = registered["client"].get_run(registered["run_id"])
    (found,) = run.inputs.dataset_inputs
    assert found.dataset.digest == registered["md5"] and len(found.dataset.digest) <= 36
    assert json.loads(found.dataset.source)["uri"] == registered["remote"]
    assert json.loads(found.dataset.profile)["rows"] == {"test": 3, "train": 6, "validation": 2}
    artifacts = [a.path for a in registered["client"].list_artifacts(registered["run_id"], "dataset")]
    assert artifacts == ["dataset/dataset.dvc"]


def test_lineage_json_and_text(registered, capsys):
    from sentimentops.steps.cli import main as cli

    assert cli(["lineage", "--model-version", "1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["run_id"] == registered["run_id"] and found["git_sha"] == "a" * 40
    assert found["dataset"] == {"name": "demo", "md5": registered["md5"], "remote": registered["remote"],
                                "rows": {"test": 3, "train": 6, "validation": 2}, "pointer": "dataset/dataset.dvc"}
    assert found["metrics"] == {"test_accuracy": 0.75} and found["images"] == {"train":
                                                                                f"reg/sentimentops-train:0.1.0@{DIGEST}"}
    assert cli(["lineage", "--model-version", "1"]) == 0
    text = capsys.readouterr().out
    assert registered["md5"] in text and f"image     train: reg/sentimentops-train:0.1.0@{DIGEST}" in text


def test_lineage_of_a_predictor_answer(registered, tmp_path, capsys):
    from sentimentops.steps.cli import main as cli

    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"predictions": [{"label": "positive", "probability": 0.9,
                                                   "model_name": "sentiment", "model_version": "1"}]}))
    assert cli(["lineage", "--response", str(answer), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1"


def test_data_pull_restores_the_exact_dataset(registered, tmp_path, capsys):
    from sentimentops.steps.cli import main as cli

    shutil.rmtree(registered["settings"].home / "dvc-workspace")  # no cache to lean on: the remote alone
    out = tmp_path / "restored"
    assert cli(["data", "pull", "--model-version", "1", "--out", str(out)]) == 0
    restored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert restored["dvc_md5"] == registered["md5"]
    assert hash_dir(out) == hash_dir(registered["dataset"]) == restored["content_hash"]


def test_data_pull_refuses_a_corrupted_remote_object(registered, tmp_path, caplog):
    """The restored md5 is hashed from the bytes on disk: a remote object with other bytes under its name is caught
    (DVC's state db records the object's name as the checked-out file's hash, so asking it would pass)."""
    from sentimentops.steps.cli import main as cli

    shutil.rmtree(registered["settings"].home / "dvc-workspace")  # no cache to lean on: the remote alone
    objects = sorted(p for p in Path(registered["remote"]).rglob("*") if p.is_file() and p.suffix != ".dir")
    assert len(objects) == 3  # one a split
    objects[0].chmod(0o644)  # DVC leaves remote objects read-only
    objects[0].write_bytes(b"other bytes under the same name")
    assert cli(["data", "pull", "--model-version", "1", "--out", str(tmp_path / "restored")]) == 1
    assert "the restored dataset has md5 " in caplog.text and f"records {registered['md5']}" in caplog.text
    assert "Traceback" not in caplog.text and not (tmp_path / "restored").exists()


def test_data_pull_default_out_replaces_only_its_own_restore(registered, tmp_path, monkeypatch, capsys, caplog):
    """--alias resolves to the number in the default folder; a second restore replaces the first's files; a folder
    holding anything else is refused, untouched. Without the committed config (an installed wheel) a restore still
    works, on FALLBACK_CORE."""
    from sentimentops.steps.cli import main as cli
    from sentimentops.steps.core import snapshots

    registered["client"].set_registered_model_alias("sentiment", "champion", "1")
    monkeypatch.delenv(DVC_CONFIG_ENV, raising=False)
    monkeypatch.setattr(snapshots, "CHECKOUT_CONFIG", tmp_path / "no-checkout" / "config")
    assert cli(["data", "pull", "--alias", "champion"]) == 0
    out = registered["settings"].home / "restored" / "sentiment-v1"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["out"] == str(out)
    assert hash_dir(out) == hash_dir(registered["dataset"])
    assert cli(["data", "pull", "--model-version", "1"]) == 0  # a previous restore: replaced
    assert hash_dir(out) == hash_dir(registered["dataset"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.parquet").write_bytes(b"not a restore's")
    assert cli(["data", "pull", "--model-version", "1", "--out", str(mine)]) == 2
    assert "other files in it" in caplog.text and (mine / "train.parquet").read_bytes() == b"not a restore's"


def test_data_pull_without_dvc_says_what_to_install(registered, tmp_path, monkeypatch, caplog):
    import sys

    from sentimentops.steps.cli import main as cli

    monkeypatch.setitem(sys.modules, "dvc.repo", None)  # as if the version extra were not installed
    assert cli(["data", "pull", "--model-version", "1", "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'sentimentops[version,register]'" in caplog.text and "Traceback" not in caplog.text


def test_an_unreachable_registry_is_not_an_unknown_version(monkeypatch):
    """Only MLflow's not-found codes become "no such version"; a server that does not answer is raised as it is."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sentimentops.steps.lineage.gather import find_version

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")  # discard port
    with pytest.raises(MlflowException) as raised:
        find_version(client, "sentiment", version="1")
    assert raised.value.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def test_data_pull_errors_are_clear(registered, tmp_path, caplog):
    from sentimentops.steps.cli import main as cli

    assert cli(["data", "pull", "--model-version", "9", "--out", str(tmp_path / "o")]) == 2
    assert "has no version 9 (versions: 1)" in caplog.text
    assert cli(["data", "pull", "--model-version", "1", "--out", str(tmp_path / "o"),
                "--remote", str(tmp_path / "empty-remote")]) == 1
    assert "could not restore" in caplog.text and "Traceback" not in caplog.text
    client = registered["client"]
    with __import__("mlflow").start_run() as bare:  # a run without the pointer (trained before it was logged)
        pass
    client.create_model_version("sentiment", f"runs:/{bare.info.run_id}/model", run_id=bare.info.run_id)
    assert cli(["data", "pull", "--model-version", "2", "--out", str(tmp_path / "o")]) == 1
    assert "holds no dataset pointer" in caplog.text


def test_manifests_record_the_image_only_inside_a_pod(monkeypatch, tmp_path):
    """The local runner sets the template's SENTIMENTOPS_IMAGE too, but runs the step here: no image to record.
    In a pod whose status cannot be read the ref itself is recorded."""
    from sentimentops.steps.core.manifests import current_image, write_manifest

    monkeypatch.setenv("SENTIMENTOPS_IMAGE", "/sentimentops-version:0.1.0")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert current_image() == ""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.delenv(podimage.POD_NAME_ENV, raising=False)  # a pod whose own name is unknown: no API call, the ref
    written = write_manifest(tmp_path / "out", "version", refs={"dvc_md5": "x.dir"})
    assert written.image == "/sentimentops-version:0.1.0"
