"""The production-data loop, small (benchmarks/feedback_loop.py runs it at full size): real processes on 127.0.0.1.

    `sentimentops serve` (capture on, its own SENTIMENTOPS_HOME) <- Rotten Tomatoes snippets, one per request
        -> POST /v1/feedback {"id": <X-Request-Id>, "label"} for most of them
        -> the production store ({home}/production) holds the captures and the labels
    `sentimentops pipeline run` (the local runner, the tiny model) under the same home
        -> ingest: feedback rows in train with provenance "feedback", the newest share as production.parquet,
           none in the base test split
        -> evaluate: accuracy on the production slice beside the base test accuracy

Wiring only: the tiny model learns nothing in one epoch (docs/measurements.md, Test models), so no accuracy is
asserted; every wait waits for a condition, bounded.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sentimentops.steps.core.client import free_port, wait_ready
from sentimentops.steps.core.processes import ProcessGroups, wait_for
from sentimentops.steps.core.processes import run as run_process
from sentimentops.steps.core.production import (
    CAPTURES,
    FEEDBACK,
    FEEDBACK_PROVENANCE,
    PRODUCTION_SPLIT,
    PROVENANCE_COLUMN,
    REQUEST_ID_HEADER,
    Store,
)

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("sentimentops"))
SNIPPETS = 48  # served
LABELLED = 40  # labelled through the API; production_fraction 0.2 -> an 8-row production slice


@pytest.fixture()
def pyfunc_model(tmp_path, tiny_model_dir) -> Path:
    """The tiny model as a registered pyfunc folder (what `serve --model-dir` reads), torch only: no ONNX export."""
    root = tmp_path / "pyfunc"
    shutil.copytree(tiny_model_dir, root / "artifacts" / "model")
    (root / "MLmodel").write_text(yaml.safe_dump({"run_id": "run-loop", "flavors": {"python_function": {
        "artifacts": {"model_dir": {"path": "artifacts/model"}}}}}))
    return root


def post(url: str, body: dict) -> tuple[dict, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read()), {k.lower(): v for k, v in answer.headers.items()}


def test_captured_labels_reach_train_and_the_production_slice(tmp_path, pyfunc_model, imdb_dir, rt_polarity_file,
                                                               tiny_model_dir):
    home = tmp_path / "home"
    env = {**os.environ, "SENTIMENTOPS_HOME": str(home), "SENTIMENTOPS_PROFILE": "local",
           "SENTIMENTOPS_MODEL_VERSION": "1", "SENTIMENTOPS_SERVE_BACKEND": "torch",
           "SENTIMENTOPS_SERVE_CAPTURE_RATE": "1", "SENTIMENTOPS_SERVE_CAPTURE_FLUSH_S": "0.5",
           "SENTIMENTOPS_SERVE_FEEDBACK_FLUSH_S": "0.5"}
    snippets = pd.read_parquet(rt_polarity_file).sample(n=SNIPPETS, random_state=3).reset_index(drop=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with ProcessGroups(grace_s=30) as children:
        server = children.start([CLI, "serve", "--model-dir", str(pyfunc_model), "--port", str(port),
                                 "--threads", "1"], log=tmp_path / "serve.log", env=env)
        assert wait_ready(base, "sentiment", 120), (tmp_path / "serve.log").read_text()[-3000:]
        ids = []
        for text in snippets["text"]:
            body, headers = post(f"{base}/v1/models/sentiment:predict", {"instances": [text]})
            assert headers[REQUEST_ID_HEADER.lower()] == body["id"]
            ids.append(body["id"])
        answers = [post(f"{base}/v1/feedback", {"id": i, "label": int(label)})[0]
                   for i, label in zip(ids[:LABELLED], snippets["label"][:LABELLED], strict=True)]
        assert {a["status"] for a in answers} == {"recorded"} and all(isinstance(a["correct"], bool) for a in answers)
        again, _ = post(f"{base}/v1/feedback", {"id": ids[0], "label": int(snippets["label"][0])})
        assert again["status"] == "duplicate"  # idempotent per id: one stored row

        store = Store(str(home / "production"))
        wait_for(lambda: len(store.read_parts(CAPTURES)) == SNIPPETS and len(store.read_parts(FEEDBACK)) == LABELLED,
                 60, "captures and labels in the production store", [server])
    captured = store.read_parts(CAPTURES)
    assert sorted(captured["id"]) == sorted(ids)
    feedback = store.read_parts(FEEDBACK)
    assert sorted(feedback["id"]) == sorted(ids[:LABELLED])
    assert set(feedback["origin"]) == {"api:id"} and set(feedback["text"]) == set(snippets["text"][:LABELLED])

    # The retrain, as the drift webhook starts it: the local runner over the rendered training template, the same
    # home (so ingest reads {home}/production, CommonSettings.production_store's default).
    run_dir = tmp_path / "run"
    params = {"profile": "local", "source": str(imdb_dir), "sample-size": "240", "test-size": "100",
              "base-model": str(tiny_model_dir), "epochs": "1", "batch-size": "16", "learning-rate": "1e-3",
              "max-length": "64", "rollout": "skip", "reason": "feedback-loop test"}
    argv = [CLI, "pipeline", "run", "--run-dir", str(run_dir)]
    for key, value in params.items():
        argv += ["-p", f"{key}={value}"]
    done = run_process(argv, timeout=900, env={**env, "SENTIMENTOPS_INGEST_PRODUCTION_MIN_ROWS": "5",
                                                "SENTIMENTOPS_REGISTER_BASELINE_ACCURACY": "0.0"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    dataset = run_dir / "ingest" / "outputs" / "dataset"
    splits = {name: pd.read_parquet(dataset / f"{name}.parquet")
              for name in ("train", "validation", "test", PRODUCTION_SPLIT)}
    labelled = set(snippets["text"][:LABELLED])
    from_feedback = pd.concat([splits["train"], splits["validation"]])
    from_feedback = from_feedback[from_feedback[PROVENANCE_COLUMN] == FEEDBACK_PROVENANCE]
    production = splits[PRODUCTION_SPLIT]
    assert len(production) == round(LABELLED * 0.2) and set(production[PROVENANCE_COLUMN]) == {FEEDBACK_PROVENANCE}
    assert len(from_feedback) == LABELLED - len(production)  # every other label trains
    assert set(from_feedback["text"]) | set(production["text"]) == labelled
    assert not set(production["text"]) & set(from_feedback["text"])  # the slice is held out
    assert not set(splits["test"]["text"]) & labelled  # feedback never enters the base test split

    evaluation = json.loads((run_dir / "evaluate" / "outputs" / "evaluation" / "manifest.json").read_text())
    metrics = evaluation["metrics"]
    assert metrics["test_accuracy"] is not None
    # evaluate scores the production slice beside the base test split (steps/evaluate/cli.py production_summary)
    assert metrics["production_rows"] == len(production), sorted(metrics)
    assert 0.0 <= metrics["production_accuracy"] <= 1.0
