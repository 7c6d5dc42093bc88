"""Batch scoring end to end on this machine: a tiny model registered in MLflow (sqlite) with its ONNX export, then
`sentimentops pipeline run` on the rendered `sentiment-batch-score` template (plan -> 3 shard runs through the
local runner's withParam -> join -> the exit handler), and the same rows scored by `sentimentops score` in one
process: the same answers, in input order, with the version champion pointed at when the run started."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sentimentops.workflows import render

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("sentimentops"))
TEMPLATE = render.RENDERED_DIR / "sentiment-batch-score.yaml"


def register_tiny(home: Path, model_dir: Path) -> None:
    """The tiny model through the register stage's own code, with an fp32 ONNX export in the evaluation folder
    (the artifact evaluate builds), then champion -> version 1."""
    from sentimentops.steps.core.manifests import write_manifest
    from sentimentops.steps.core.tracking import configure, mlflow_run
    from sentimentops.steps.evaluate.onnx_export import export_fp32
    from sentimentops.steps.register.cli import RegisterSettings, register

    settings = RegisterSettings(home=home, mlflow_tracking_uri=f"sqlite:///{home}/mlflow.db",
                                mlflow_artifact_root=str(home / "mlartifacts"), champion_moves_at="rollout",
                                baseline_accuracy=0.0)
    root = home.parent / "reg"
    model_out, evaluation, version_out = root / "train", root / "evaluate", root / "version"
    shutil.copytree(model_dir, model_out / "model")
    (evaluation / "onnx").mkdir(parents=True)
    export_fp32(model_out / "model", evaluation / "onnx" / "model.onnx")
    with mlflow_run(settings, run_name="tiny") as run:
        run_id = run.info.run_id
    write_manifest(model_out, "train", refs={"mlflow_run_id": run_id})
    write_manifest(version_out, "version", refs={"dvc_md5": "md5-0"})
    write_manifest(evaluation, "evaluate", refs={"mlflow_run_id": run_id},
                   metrics={"test_accuracy": 0.5, "test_f1": 0.5, "test_roc_auc": 0.5})
    register(model_out, evaluation, version_out, settings)
    configure(settings).set_registered_model_alias("sentiment", "champion", "1")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, imdb_dir) -> dict:
    home = tmp_path_factory.mktemp("batch") / "home"
    register_tiny(home, tiny_model_dir)
    inputs = home.parent / "reviews"
    inputs.mkdir()
    # 150 rows: three shards of whole 64-row blocks (steps/score/core.py BLOCK), the last one short
    reviews = pd.read_parquet(imdb_dir / "sample_test.parquet").head(150)[["id", "text"]]
    reviews.iloc[:25].to_parquet(inputs / "a.parquet")
    reviews.iloc[25:].to_json(inputs / "b.jsonl", orient="records", lines=True)
    return {"home": home, "inputs": inputs, "ids": reviews["id"].tolist(),
            "env": {**os.environ, "SENTIMENTOPS_HOME": str(home), "SENTIMENTOPS_PROFILE": "local",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}}


def cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env["env"], capture_output=True, text=True, timeout=timeout,
                          cwd=env["home"].parent, check=False)


@pytest.mark.timeout(600)
def test_the_batch_score_template_fans_out_locally_and_matches_one_process(env):
    run_dir, fanned = env["home"].parent / "run", env["home"].parent / "fanned.parquet"
    result = cli(env, "pipeline", "run", "--template", str(TEMPLATE), "--run-dir", str(run_dir),
                 "-p", f"input={env['inputs']}", "-p", f"output={fanned}", "-p", "shards=3", "-p", "profile=local")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    status = json.loads((run_dir / "status.json").read_text())
    phases = {name: t["phase"] for name, t in status["tasks"].items()}
    assert phases == {"plan": "Succeeded", "score": "Succeeded", "score(0)": "Succeeded",
                      "score(1)": "Succeeded", "score(2)": "Succeeded", "join": "Succeeded", "onExit": "Succeeded"}
    assert status["tasks"]["score(1)"]["argv"][:3] == ["sentimentops", "score", "run"]
    summary = json.loads((run_dir / "join" / "outputs" / "summary" / "summary.json").read_text())
    assert summary["rows"] == 150 and summary["model_version"] == "1" and summary["shards"] == 3
    assert sum(summary["labels"].values()) == 150

    scored = pd.read_parquet(fanned)
    assert scored["id"].tolist() == env["ids"]  # input order across files and shards
    assert set(scored["model_version"]) == {"1"} and set(scored["model_name"]) == {"sentiment"}

    single = env["home"].parent / "single.parquet"
    result = cli(env, "score", "--input", str(env["inputs"]), "--output", str(single))
    assert result.returncode == 0, result.stderr[-4000:]
    pd.testing.assert_frame_equal(pd.read_parquet(single), scored)


def test_a_bad_input_fails_plan_with_a_data_error_and_nothing_fans_out(env, tmp_path):
    (tmp_path / "in.csv").write_text("review,stars\ngreat,5\n")
    run_dir, out = tmp_path / "run", tmp_path / "out.parquet"
    result = cli(env, "pipeline", "run", "--template", str(TEMPLATE), "--run-dir", str(run_dir),
                 "-p", f"input={tmp_path / 'in.csv'}", "-p", f"output={out}", "-p", "profile=local")
    assert result.returncode == 1
    status = json.loads((run_dir / "status.json").read_text())
    assert status["tasks"]["plan"]["exit_code"] == 1 and status["tasks"]["score"]["phase"] == "Omitted"
    assert "no 'text' column" in (run_dir / "plan" / "log.txt").read_text()
    assert not out.exists()
