"""register records where KServe reads the model, against a real MLflow server that proxies artifacts the way the
cluster's does (`mlflow server --artifacts-destination D`: clients see `mlflow-artifacts:/...` download URIs,
the files land under D). The `storage_uri` tag register writes is D/<path>, and that folder really holds the
registered model folder (what KServe's storage initializer copies to /mnt/models and `serve --model-dir` reads);
the rollout resolves the candidate to exactly that tag.

D is a local folder here (file://), a gs:// bucket in the cluster: the mapping is the same string operation
(CommonSettings.storage_uri), which tests/unit/test_rollout_controller.py also pins for gs://.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import spawn, stop, wait_for

pytestmark = pytest.mark.slow
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    dest, port = root / "dest", free_port()
    log = root / "server.log"
    with log.open("w") as out:
        proc = spawn([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination",
                      dest.as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                     stdout=out, stderr=subprocess.STDOUT, cwd=root)
    proc.log = log  # wait_for shows its tail if it exits
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url), 240, "mlflow server", procs=[proc], poll_s=0.5)
        yield {"url": url, "dest": dest, "root": root}
    finally:
        stop(proc, grace_s=10)


def register_tiny(server, tiny_model_dir: Path, destination: str):
    from sentimentops.steps.core.config import load_profile
    from sentimentops.steps.core.manifests import write_manifest
    from sentimentops.steps.core.tracking import mlflow_run
    from sentimentops.steps.register.cli import RegisterSettings, register

    settings = RegisterSettings(home=server["root"] / "home", mlflow_tracking_uri=server["url"],
                                mlflow_artifact_root=load_profile("gke")["common"]["mlflow_artifact_root"],
                                mlflow_artifacts_destination=destination, champion_moves_at="rollout",
                                baseline_accuracy=0.0)
    work = server["root"] / "stage"
    model_out, evaluation, version_out = work / "train", work / "evaluate", work / "version"
    if not (model_out / "model").is_dir():
        shutil.copytree(tiny_model_dir, model_out / "model")
        with mlflow_run(settings, run_name="tiny") as run:
            run_id = run.info.run_id
        write_manifest(model_out, "train", refs={"mlflow_run_id": run_id})
        write_manifest(version_out, "version", refs={"dvc_md5": "md5-0"})
        write_manifest(evaluation, "evaluate", refs={"mlflow_run_id": run_id},
                       metrics={"test_accuracy": 0.9, "test_f1": 0.9, "test_roc_auc": 0.9})
    return settings, register(model_out, evaluation, version_out, settings)


def test_the_storage_uri_tag_is_the_proxied_model_folder_under_the_destination(server, tiny_model_dir, caplog):
    from sentimentops.steps.core.config import STORAGE_URI_TAG
    from sentimentops.steps.core.contract import read_model_folder
    from sentimentops.steps.core.tracking import configure
    from sentimentops.steps.rollout.registry import Registry

    settings, result = register_tiny(server, tiny_model_dir, server["dest"].as_uri())
    client = configure(settings)
    download = client.get_model_version_download_uri(settings.registered_model, result.version)
    assert download.startswith("mlflow-artifacts:/")  # proxied: not a URI KServe's storage initializer reads
    tag = client.get_model_version(settings.registered_model, result.version).tags[STORAGE_URI_TAG]
    assert tag.startswith(server["dest"].as_uri() + "/") and tag.endswith(download.split(":", 1)[1].lstrip("/"))
    folder = Path(tag.removeprefix("file://"))
    assert (folder / "MLmodel").is_file()  # the registered pyfunc folder itself: what /mnt/models receives
    assert read_model_folder(folder).model_dir.is_dir()
    with caplog.at_level("WARNING"):
        assert Registry(settings).resolve("challenger") == (result.version, tag)
    assert "no storage_uri tag" not in caplog.text

    # A re-run with the cluster's kind of destination (a bucket) finds the same version and records its gs:// URI.
    bucket = "gs://sentimentops-test-bucket/artifacts"
    settings, again = register_tiny(server, tiny_model_dir, bucket)
    assert again.version == result.version
    tags = client.get_model_version(settings.registered_model, again.version).tags
    assert tags[STORAGE_URI_TAG] == f"{bucket}/{download.split(':', 1)[1].lstrip('/')}"
