"""GET /health reports the commit the predictor's code came from: the last link of a served prediction's lineage
(response -> model version -> MLflow run -> dataset hash -> git commit). In the image that commit is
SENTIMENTOPS_GIT_SHA, baked in from Dockerfile.serve's GIT_SHA build argument (`make image-test` checks the built
image); here the real app (server.build, the torch backend on the tiny DistilBERT) answers over Starlette's client."""
from __future__ import annotations

import time

import pytest


def health(tiny_model_dir) -> dict:
    from fastapi.testclient import TestClient

    from sentimentops.steps.serve.model import ModelInfo
    from sentimentops.steps.serve.server import ServeSettings, build

    _, app = build(tiny_model_dir, ModelInfo("sentiment", "3"), ServeSettings(backend="torch", threads=1))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/v2/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = client.get("/health")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_health_reports_the_baked_in_commit(monkeypatch, tiny_model_dir):
    sha = "3f1c2a9be0d4c5e6f708192a3b4c5d6e7f809a1b"
    monkeypatch.setenv("SENTIMENTOPS_GIT_SHA", sha)
    body = health(tiny_model_dir)
    assert body["git_sha"] == sha
    assert body["status"] == "ready" and body["model_version"] == "3" and body["backend"] == "torch"


@pytest.mark.parametrize("value", ["", None], ids=["empty", "unset"])
def test_an_image_built_without_a_commit_never_reports_an_empty_one(monkeypatch, tiny_model_dir, tmp_path, value):
    # An empty SENTIMENTOPS_* value counts as unset (Dockerfile.serve's default GIT_SHA is ""): then git, and outside
    # a checkout (the image has no .git) the honest `unknown`, never "".
    if value is None:
        monkeypatch.delenv("SENTIMENTOPS_GIT_SHA", raising=False)
    else:
        monkeypatch.setenv("SENTIMENTOPS_GIT_SHA", value)
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "no-repository"))  # what a container without .git sees
    sha = health(tiny_model_dir)["git_sha"]
    assert sha == "unknown"
