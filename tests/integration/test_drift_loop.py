"""The whole drift loop on one machine, with real processes on 127.0.0.1:

    prediction records --> `drift watch` (online PSI, /metrics) --POST reason--> `drift webhook`
        --> local runner on the rendered training template with -p reason=... --> MLflow run tagged run.reason

IMDB windows against an IMDB reference raise nothing; the first window of Rotten Tomatoes snippets drifts and the
retrain it starts records the drift reason in MLflow. Records come from the tiny model's real predictions on
real reviews (the fields the predictor writes, docs/metrics.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import ProcessGroups, stop, wait_for
from sentimentops.steps.core.processes import run as run_process

pytestmark = pytest.mark.slow
# PSI noise is about (bins - 1) * (1/window + 1/reference rows): 0.07 at 200 and 400, well under 0.2 (at a window
# of 100 the content feature of one IMDB window reached 0.24: too small a window for the threshold).
WINDOW = 200
JUDGED = 'sentiment_drift_windows_total{outcome="judged"}'


def prediction_records(model_dir: Path, texts: list[str]) -> tuple[list[str], list[float]]:
    """What the predictor appends per prediction: token count, P(positive), confidence, label, content; no text."""
    from sentimentops.steps.evaluate.scoring import encode, score_torch
    from sentimentops.steps.serve.records import record

    encoded = encode(model_dir, texts)  # the predictor's TextEncoder at contract.MAX_TOKENS
    probs = score_torch(model_dir, encoded, batch_size=32, precision="fp32")
    lines = [json.dumps(record("1", e.length, e.truncated, p, e.content, ts=0.0))
             for e, p in zip(encoded, probs, strict=True)]
    return lines, [float(p) for p in probs]


def get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def metric(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else None


@pytest.fixture()
def loop(tmp_path, imdb_dir, tiny_model_dir):
    from sentimentops.steps.evaluate.metrics import write_drift_reference

    test = pd.read_parquet(imdb_dir / "sample_test.parquet")
    _, probs = prediction_records(tiny_model_dir, test["text"].tolist()[:400])
    write_drift_reference(tiny_model_dir, test["text"].tolist()[:400], probs, tmp_path)
    home, log = tmp_path / "home", tmp_path / "predictions.jsonl"
    log.touch()
    hook_port, metrics_port = free_port(), free_port()
    env = {**os.environ, "SENTIMENTOPS_HOME": str(home)}
    params = {"profile": "local", "source": str(imdb_dir), "sample-size": "240", "test-size": "100",
              "base-model": str(tiny_model_dir), "epochs": "1", "batch-size": "16", "learning-rate": "1e-3",
              "max-length": "64", "rollout": "skip"}
    hook_argv = [sys.executable, "-m", "sentimentops.steps.cli", "drift", "webhook", "--port", str(hook_port),
                 "--run-root", str(tmp_path / "runs"), "--env", f"SENTIMENTOPS_HOME={home}",
                 "--env", "SENTIMENTOPS_REGISTER_BASELINE_ACCURACY=0.0", "--max-seconds", "900"]
    for key, value in params.items():
        hook_argv += ["-p", f"{key}={value}"]
    children = ProcessGroups()

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        return children.start(argv, log=tmp_path / f"{name}.log", env=env)

    hook = start("webhook", hook_argv)
    watch = start("watch", [sys.executable, "-m", "sentimentops.steps.cli", "drift", "watch", "--records", str(log),
                            "--reference", str(tmp_path / "drift_reference.json"), "--window", str(WINDOW),
                            "--persist", "1", "--port", str(metrics_port), "--poll-seconds", "0.2",
                            "--webhook-url", f"http://127.0.0.1:{hook_port}/retrain", "--max-seconds", "900"])
    try:
        yield {"log": log, "home": home, "hook_port": hook_port, "metrics_port": metrics_port,
               "hook": hook, "watch": watch, "runs": tmp_path / "runs"}
    finally:
        try:  # the retrains the webhook started (each its own process group): stopped even if the webhook hangs
            retrains = [run["pid"] for run in get_json(f"http://127.0.0.1:{hook_port}/runs")["runs"]]
        except OSError:
            retrains = []
        children.stop_all()  # the webhook stops its running retrain on SIGTERM
        for pid in retrains:
            stop(pid)


def test_drift_starts_a_retrain_whose_reason_is_in_mlflow(loop, imdb_dir, rt_polarity_file, tiny_model_dir):
    # held-out reviews the reference did not use (and the tiny tokenizer was not trained on: sample_train)
    imdb = pd.read_parquet(imdb_dir / "sample_test.parquet")["text"].tolist()[400:400 + 3 * WINDOW]
    snippets = pd.read_parquet(rt_polarity_file).sample(n=WINDOW, random_state=0)
    imdb_lines, _ = prediction_records(tiny_model_dir, imdb)
    rt_lines, _ = prediction_records(tiny_model_dir, snippets["text"].tolist())
    port, hook_url = loop["metrics_port"], f"http://127.0.0.1:{loop['hook_port']}"
    wait_for(lambda: metric(port, "sentiment_drift_window_records") is not None, 60, "drift watch /metrics",
             [loop["watch"]])
    wait_for(lambda: _healthy(hook_url), 60, "drift webhook", [loop["hook"]])

    with open(loop["log"], "a") as fh:  # three windows of IMDB reviews: no drift, no retrain
        fh.write("\n".join(imdb_lines) + "\n")
    wait_for(lambda: metric(port, JUDGED) == 3, 60, "3 IMDB windows", [loop["watch"]])
    assert get_json(f"{hook_url}/runs")["runs"] == []
    assert metric(port, 'sentiment_drift_triggers_total{outcome="sent"}') is None

    with open(loop["log"], "a") as fh:  # one window of Rotten Tomatoes snippets
        fh.write("\n".join(rt_lines) + "\n")
    runs = wait_for(lambda: get_json(f"{hook_url}/runs")["runs"], 60, "the webhook call", [loop["watch"]])
    assert metric(port, JUDGED) == 4  # triggered by the first drifted window
    (run,) = runs
    assert run["reason"].startswith("drift: input_tokens PSI ")

    run_dir = Path(run["run_dir"])
    status = wait_for(lambda: _finished(run_dir), 900, "the retraining run", [loop["hook"]])
    assert status["phase"] == "Succeeded", (run_dir / "webhook-run.log").read_text()[-3000:]
    assert status["parameters"]["reason"] == run["reason"]

    from mlflow import MlflowClient

    uri = f"sqlite:///{loop['home']}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("sentiment-training")
    (train_run,) = client.search_runs([experiment.experiment_id])
    assert train_run.data.tags["run.reason"] == run["reason"]
    (version,) = client.search_model_versions("name = 'sentiment'")
    assert client.get_model_version("sentiment", version.version).tags["run.reason"] == run["reason"]
    # the retrained model carries its own drift reference (evaluate -> register)
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "evaluation")}
    assert "evaluation/drift_reference.json" in artifacts

    # ... and `drift report` finds it through the registry: Evidently's report of the records, logged to MLflow
    out = loop["log"].parent / "report"
    done = run_process([sys.executable, "-m", "sentimentops.steps.cli", "drift", "report", "--records", str(loop["log"]),
                        "--model-uri", f"models:/sentiment/{version.version}", "--out", str(out)],
                       timeout=300, env={**os.environ, "SENTIMENTOPS_HOME": str(loop["home"])})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "drift.json").read_text())
    assert summary["records"] == 4 * WINDOW and "input_tokens" in summary["drifted"]
    drift_runs = client.search_runs([client.get_experiment_by_name("sentiment-training-drift").experiment_id])
    assert [r.info.run_id for r in drift_runs] == [summary["mlflow_run_id"]]


def _healthy(url: str) -> bool:
    try:
        return "runs" in get_json(f"{url}/healthz")
    except OSError:
        return False


def _finished(run_dir: Path) -> dict | None:
    path = run_dir / "status.json"
    if not path.is_file():
        return None
    try:
        status = json.loads(path.read_text())
    except json.JSONDecodeError:  # being rewritten
        return None
    return status if status.get("phase") in ("Succeeded", "Failed") else None
