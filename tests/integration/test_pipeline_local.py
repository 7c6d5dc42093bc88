"""The whole training DAG through the local runner over the rendered Argo spec, with the real stages, a real
MLflow (sqlite), a real DVC remote, then the predictor serving the registered champion.

One run folder is driven the way a user would: stopped after `train`, resumed (earlier steps reused), re-run
(everything reused): still exactly one registered version.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sentimentops.steps.core.client import free_port, predict, wait_ready
from sentimentops.steps.core.manifests import hash_dir, read_manifest
from sentimentops.steps.core.processes import run, spawn, stop

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("sentimentops"))
REPO = Path(__file__).resolve().parents[2]
SHA = re.compile(r"[0-9a-f]{40}")
TASKS = ["ingest", "validate", "version", "train", "evaluate", "register"]


def pipeline(run_dir: Path, home: Path, source: Path, base_model: Path, *extra: str) -> tuple[int, dict]:
    params = {"profile": "local", "source": str(source), "sample-size": "240", "test-size": "100",
              "base-model": str(base_model), "epochs": "1", "batch-size": "16", "learning-rate": "1e-3",
              "max-length": "64", "reason": "integration-test", "rollout": "skip"}
    argv = [CLI, "pipeline", "run", "--run-dir", str(run_dir), "--env", f"SENTIMENTOPS_HOME={home}",
            # The tiny test model is near chance: a zero baseline lets it become champion.
            "--env", "SENTIMENTOPS_REGISTER_BASELINE_ACCURACY=0.0", *extra]
    for key, value in params.items():
        argv += ["-p", f"{key}={value}"]
    done = run(argv, timeout=600)
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
    assert "Traceback" not in done.stderr + done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    return done.returncode, {name: task["phase"] for name, task in status.get("tasks", {}).items()}


def mlflow_client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def outputs(run_dir: Path, task: str) -> Path:
    (folder,) = (run_dir / task / "outputs").iterdir()
    return folder


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, imdb_dir, tiny_model_dir):
    root = tmp_path_factory.mktemp("pipeline")
    home, run_dir = root / "home", root / "run"
    first = pipeline(run_dir, home, imdb_dir, tiny_model_dir, "--stop-after", "train")
    second = pipeline(run_dir, home, imdb_dir, tiny_model_dir)
    third = pipeline(run_dir, home, imdb_dir, tiny_model_dir)
    return {"home": home, "run_dir": run_dir, "runs": [first, second, third]}


def test_stop_after_train_registers_nothing(resumed_run):
    code, phases = resumed_run["runs"][0]
    assert code == 0
    assert [phases.get(t) for t in TASKS[:4]] == ["Succeeded"] * 4
    assert phases.get("evaluate") in (None, "Pending")


def test_resume_reuses_earlier_steps_and_rerun_reuses_all(resumed_run):
    (code2, phases2), (code3, phases3) = resumed_run["runs"][1:]
    assert code2 == 0 and [phases2[t] for t in TASKS] == ["Reused"] * 4 + ["Succeeded"] * 2
    assert code3 == 0 and [phases3[t] for t in TASKS] == ["Reused"] * 6


def test_one_version_registered_with_aliases_and_lineage_tags(resumed_run):
    client, run_dir = mlflow_client(resumed_run["home"]), resumed_run["run_dir"]
    versions = client.search_model_versions("name = 'sentiment'")
    assert len(versions) == 1
    version = client.get_model_version("sentiment", versions[0].version)
    assert set(version.aliases) == {"champion", "challenger"}
    train_manifest = read_manifest(outputs(run_dir, "train"))
    version_manifest = read_manifest(outputs(run_dir, "version"))
    assert version.tags["dataset.dvc_md5"] == version_manifest.refs["dvc_md5"]
    assert version.tags["mlflow_run_id"] == train_manifest.refs["mlflow_run_id"] == version.run_id
    assert version.tags["git_sha"] == train_manifest.git_sha
    assert SHA.fullmatch(train_manifest.git_sha), train_manifest.git_sha  # a real commit, not `unknown` twice
    assert version.tags["run.reason"] == "integration-test"
    assert version.tags["promotion.decision"] == "promote"
    metrics = json.loads((outputs(run_dir, "evaluate") / "metrics.json").read_text())["challenger"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(metrics["accuracy"])
    run = client.get_run(version.run_id)
    assert {"test_accuracy", "test_f1", "test_roc_auc", "train_loss", "samples_per_s"} <= set(run.data.metrics)
    assert run.data.params["train_rows"] == "216"
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "evaluation")}
    assert {f"evaluation/{name}" for name in ("confusion_matrix.png", "reliability.png", "report.html",
                                              "metrics.json")} <= artifacts
    assert (outputs(run_dir, "register") / "promoted").read_text() == "true"


def test_evaluate_logs_the_evidence_and_the_version_carries_its_card(resumed_run):
    """Issue 14: the baseline, the behavioural pass rates, slices and calibration in MLflow and metrics.json; the
    int8 decision on a paired comparison; the generated card attached to the version (artifact, tag, description)."""
    client, run_dir = mlflow_client(resumed_run["home"]), resumed_run["run_dir"]
    version = client.get_model_version("sentiment", "1")
    run = client.get_run(version.run_id)
    assert {"tfidf_test_accuracy", "behaviour_pass_rate", "behaviour_pass_rate_dir", "test_ece", "test_brier",
            "slice_accuracy_truncated"} <= set(run.data.metrics)
    evaluation = outputs(run_dir, "evaluate")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["baseline"]["name"] == "tfidf-logreg" and metrics["baseline"]["rows"] == 100
    assert metrics["behaviour"]["suite"] == "sentiment-behaviour" and metrics["behaviour"]["cases"] > 100
    assert metrics["int8"]["rows"] == 100 and sum(metrics["int8"]["discordant"]) <= 100
    assert metrics["served_backend"] == f"onnx-{metrics['int8']['decision']}"
    assert json.loads((evaluation / "onnx" / "export.json").read_text())["precision"] == metrics["int8"]["decision"]
    report = (evaluation / "report.html").read_text()
    assert "Behavioural tests" in report and "<script" not in report.lower()
    assert version.tags["model_card"] == f"runs:/{version.run_id}/model_card/README.md"
    assert version.description.startswith("sentiment v1: ") and version.run_id in version.description
    card = Path(client.download_artifacts(version.run_id, "model_card/README.md", str(resumed_run["home"])))
    text = card.read_text()
    assert text.startswith("---\n") and "## Limitations" in text
    assert f"{float(version.tags['test_accuracy']):.3f}" in text
    assert version.tags["tfidf_test_accuracy"] == f"{metrics['baseline']['accuracy']:.6f}"


def repo_head() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_lineage_names_the_commit_the_run_and_the_dataset(resumed_run):
    """Issue 13: `sentimentops lineage` states the promise of the README's first lines for the registered version:
    the real commit, the run, and the dataset (md5 = the version tag, the remote, rows per split). The run holds
    the dataset as an MLflow input (digest = the DVC md5) and the `.dvc` pointer as an artifact, each once."""
    home, run_dir = resumed_run["home"], resumed_run["run_dir"]
    env = {**os.environ, "SENTIMENTOPS_HOME": str(home), "SENTIMENTOPS_GIT_SHA": ""}
    done = run([CLI, "lineage", "--model-version", "1", "--json"], env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lineage = json.loads(done.stdout)
    client = mlflow_client(home)
    version = client.get_model_version("sentiment", "1")
    assert SHA.fullmatch(lineage["git_sha"]) and lineage["git_sha"] == repo_head()
    assert lineage["run_id"] == version.run_id and lineage["dataset"]["md5"] == version.tags["dataset.dvc_md5"]
    assert lineage["dataset"]["remote"] == str(home / "dvc-remote") == version.tags["dataset.dvc_remote"]
    ingest = read_manifest(outputs(run_dir, "ingest"))
    assert lineage["dataset"]["rows"] == {s: int(ingest.metrics[f"{s}_rows"]) for s in ("train", "validation", "test")}
    assert lineage["metrics"]["test_accuracy"] == pytest.approx(float(version.tags["test_accuracy"]))
    assert lineage["images"] == {}  # a local run: no containers
    assert version.description.split("\n")[0].endswith("images none recorded")
    assert lineage["dataset"]["md5"] in version.description and lineage["git_sha"] in version.description
    inputs = client.get_run(version.run_id).inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [version.tags["dataset.dvc_md5"]]  # once, after a resume
    assert [a.path for a in client.list_artifacts(version.run_id, "dataset")] == ["dataset/dataset.dvc"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{home}/mlflow.db")
    info = mlflow.models.get_model_info("models:/sentiment/1")
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"


def test_data_pull_restores_the_dataset_the_version_was_trained_on(resumed_run):
    home, run_dir = resumed_run["home"], resumed_run["run_dir"]
    restored = home / "restored"
    done = run([CLI, "data", "pull", "--model-version", "1", "--out", str(restored)],
               env={**os.environ, "SENTIMENTOPS_HOME": str(home)}, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    version = mlflow_client(home).get_model_version("sentiment", "1")
    assert summary["dvc_md5"] == version.tags["dataset.dvc_md5"]
    assert hash_dir(restored) == read_manifest(outputs(run_dir, "train")).inputs["dataset"]


def test_manifest_chain_links_every_step_to_its_inputs(resumed_run):
    run_dir = resumed_run["run_dir"]
    folders = {task: outputs(run_dir, task) for task in TASKS}
    expected = {"validate": {"dataset": "ingest"}, "version": {"dataset": "ingest"},
                "train": {"dataset": "ingest", "version": "version"},
                "evaluate": {"dataset": "ingest", "model": "train"},
                "register": {"model": "train", "evaluation": "evaluate", "version": "version",
                             "dataset": "ingest"}}
    for task, inputs in expected.items():
        manifest = read_manifest(folders[task])
        assert manifest.step == task
        assert manifest.inputs == {name: hash_dir(folders[up]) for name, up in inputs.items()}, task
    assert read_manifest(folders["register"]).refs["model_version"] == "1"


def test_the_champion_is_served_with_its_version(resumed_run):
    port = free_port()
    home = resumed_run["home"]
    log = home / "serve.log"
    with log.open("w") as out:  # a file, not an unread pipe that could fill and block the server
        server = spawn([CLI, "serve", "--model-uri", "models:/sentiment@champion", "--port", str(port)],
                       env={**os.environ, "SENTIMENTOPS_HOME": str(home)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_ready(f"http://127.0.0.1:{port}", "sentiment", 90), log.read_text()[-2000:]
        preds = predict(f"http://127.0.0.1:{port}", "sentiment", ["great film", "awful film"])
        assert [p["model_version"] for p in preds] == ["1", "1"]
        assert all(p["label"] in {"positive", "negative"} for p in preds)
    finally:
        stop(server)


def test_bad_dataset_stops_at_validate_and_registers_nothing(tmp_path, imdb_dir, tiny_model_dir):
    train = pd.read_parquet(imdb_dir / "sample_train.parquet")[["text", "label"]].head(400).copy()
    test = pd.read_parquet(imdb_dir / "sample_test.parquet")[["text", "label"]].head(200).copy()
    train.loc[:5, "text"] = None                         # nulls
    train.loc[6:8, "label"] = 2                          # a third label
    train.loc[train.index[20:300], "label"] = 0          # about 90/10
    test.loc[:60, "text"] = train["text"].iloc[40:101].to_numpy()  # train/test overlap
    source = tmp_path / "bad"
    source.mkdir()
    train.to_parquet(source / "train.parquet")
    test.to_parquet(source / "test.parquet")
    home, run_dir = tmp_path / "home", tmp_path / "run"
    code, phases = pipeline(run_dir, home, source, tiny_model_dir)
    assert code != 0
    assert phases["ingest"] == "Succeeded" and phases["validate"] == "Failed"
    assert all(phases[t] in ("Omitted", "Pending") for t in TASKS[2:])
    report = (outputs(run_dir, "validate") / "report.md").read_text()
    for name in ("text_not_null", "label_in_set", "label_balance", "overlap_share"):
        assert name in report
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        mlflow_client(home).get_registered_model("sentiment")
    assert not (home / "dvc-remote").exists()
