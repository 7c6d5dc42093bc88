"""evaluate on the production slice (issue 15): where ingest held out recent feedback (production.parquet), the
challenger and the champion are scored on it through the same backend, and the numbers reach metrics.json, the
manifest, MLflow and the report. A real tiny DistilBERT through torch; the registry's champion is that same model
(downloaded from a folder instead of MLflow: the download path is tested with the registry elsewhere)."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

from sentimentops.steps.core.contract import read_model_folder
from sentimentops.steps.core.manifests import write_manifest
from sentimentops.steps.evaluate.metrics import Metrics

EVAL_FLAGS = ["--backend", "torch", "--no-baseline", "--no-behaviour", "--explain-errors", "0"]


def test_production_summary_follows_the_test_scheme():
    from sentimentops.steps.evaluate.cli import production_summary

    mine = Metrics(accuracy=0.9, f1=0.8, roc_auc=0.95, rows=60, confusion=[[1, 0], [0, 1]])
    theirs = Metrics(accuracy=0.7, f1=0.6, roc_auc=0.75, rows=60, confusion=[[1, 0], [0, 1]])
    assert production_summary(mine, theirs) == {
        "production_accuracy": 0.9, "production_f1": 0.8, "production_rows": 60.0,
        "champion_production_accuracy": 0.7, "champion_production_f1": 0.6}
    assert "champion_production_accuracy" not in production_summary(mine, None)


@pytest.fixture()
def stage(home, tmp_path, tiny_model_dir, imdb_dir, monkeypatch):
    from sentimentops.steps.core.config import load_settings
    from sentimentops.steps.core.tracking import mlflow_run
    from sentimentops.steps.evaluate.cli import EvaluateSettings

    monkeypatch.setenv("SENTIMENTOPS_EXPORT_ENABLED", "false")  # torch only: the ONNX export is tested elsewhere
    dataset, model_out = tmp_path / "dataset", tmp_path / "train"
    dataset.mkdir()
    test = pd.read_parquet(imdb_dir / "sample_test.parquet").head(40).assign(provenance="base")
    test.to_parquet(dataset / "test.parquet")
    test.head(10).to_parquet(dataset / "train.parquet")
    shutil.copytree(tiny_model_dir, model_out / "model")
    with mlflow_run(load_settings(EvaluateSettings, {}), run_name="tiny") as run:
        write_manifest(model_out, "train", refs={"mlflow_run_id": run.info.run_id})
    return dataset, model_out, run.info.run_id


def test_evaluate_scores_challenger_and_champion_on_the_production_slice(stage, tmp_path, tiny_model_dir,
                                                                         monkeypatch):
    import mlflow

    from sentimentops.steps.evaluate import cli

    dataset, model_out, run_id = stage
    slice_ = pd.DataFrame({"text": ["a wonderful, moving film", "dull and far too long", "great cast, great story",
                                    "the worst film this year"] * 5, "label": [1, 0, 1, 0] * 5,
                           "provenance": "feedback"})
    slice_.to_parquet(dataset / "production.parquet")
    champion = tmp_path / "champion"
    shutil.copytree(tiny_model_dir, champion)
    monkeypatch.setattr(cli, "alias_version", lambda settings, alias: SimpleNamespace(version="3"))
    monkeypatch.setattr(cli, "download_model", lambda settings, uri, dst: read_model_folder(champion))
    out = tmp_path / "evaluation"
    assert cli.main(["--dataset", str(dataset), "--model", str(model_out), "--out", str(out), *EVAL_FLAGS]) == 0
    manifest = json.loads((out / "manifest.json").read_text())["metrics"]
    assert manifest["production_rows"] == 20
    assert 0 <= manifest["production_accuracy"] <= 1
    # the champion is the same weights through the same backend: the same answers on the same rows
    assert manifest["champion_production_accuracy"] == pytest.approx(manifest["production_accuracy"])
    assert manifest["champion_test_accuracy"] == pytest.approx(manifest["test_accuracy"])
    report = json.loads((out / "metrics.json").read_text())
    assert report["production"]["rows"] == 20 and report["production"]["champion"]["rows"] == 20
    assert "Production slice (recent feedback)" in (out / "report.html").read_text()
    logged = mlflow.get_run(run_id).data.metrics
    assert logged["production_accuracy"] == pytest.approx(manifest["production_accuracy"])


def test_without_a_production_slice_nothing_production_is_reported(stage, tmp_path):
    from sentimentops.steps.evaluate import cli

    dataset, model_out, _ = stage
    out = tmp_path / "evaluation"
    assert cli.main(["--dataset", str(dataset), "--model", str(model_out), "--out", str(out), *EVAL_FLAGS,
                     "--no-compare-champion"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())["metrics"]
    assert not [k for k in manifest if "production" in k]
    assert json.loads((out / "metrics.json").read_text())["production"] is None
    assert "No production slice" in (out / "report.html").read_text()
