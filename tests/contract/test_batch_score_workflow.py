"""Contract tests: the `sentiment-batch-score` WorkflowTemplate (workflows/definitions/batch_score.py): golden
render, strict schema + semantic checks, plan -> score (withParam over plan's shards) -> join, the concrete model
URI handed from plan to every shard, retries that skip data and usage errors, and every container's args parsed
by the real `sentimentops score` CLI."""
from __future__ import annotations

import pytest
import yaml

from sentimentops.steps.score import cli as score_cli
from sentimentops.workflows import render
from sentimentops.workflows.argo.spec import load_spec, topological_order
from sentimentops.workflows.checks.schema_check import schema_errors
from sentimentops.workflows.checks.semantic_check import semantic_errors
from sentimentops.workflows.definitions import batch_score, common
from sentimentops.workflows.definitions.training import TRAINING_SERVICE_ACCOUNT

RENDERED = render.RENDERED_DIR / "sentiment-batch-score.yaml"


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(RENDERED.read_text())


def templates(d: dict) -> dict[str, dict]:
    return {t["name"]: t for t in d["spec"]["templates"]}


def tasks(d: dict) -> dict[str, dict]:
    return {t["name"]: t for t in templates(d)[batch_score.ENTRYPOINT]["dag"]["tasks"]}


def test_committed_yaml_equals_a_fresh_render():
    assert render.render_all()["sentiment-batch-score.yaml"] == RENDERED.read_text(), "run `sentimentops render`"


def test_passes_strict_schema_and_semantic_checks(doc):
    assert schema_errors(doc) == [] and semantic_errors(doc) == []


def test_name_labels_parameters_and_exit_handler(doc):
    assert doc["kind"] == "WorkflowTemplate" and doc["metadata"]["name"] == "sentiment-batch-score"
    labels = doc["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "batch-score"
    assert labels["app.kubernetes.io/version"] == common.package_version()
    params = {p["name"]: p for p in doc["spec"]["arguments"]["parameters"]}
    assert {"input", "output", "model-uri", "shards", "image-registry", "image-tag", "mlflow-tracking-uri"} <= set(
        params)
    assert params["model-uri"]["value"] == ""  # the registered model's champion (score's own default)
    assert all(p["description"].strip() for p in params.values())
    assert doc["spec"]["onExit"] == common.NOTIFY_TEMPLATE and common.NOTIFY_TEMPLATE in templates(doc)
    assert doc["spec"]["serviceAccountName"] == TRAINING_SERVICE_ACCOUNT
    assert "synchronization" not in doc["spec"]  # batch jobs may run side by side


def test_plan_fans_out_over_its_shards_then_join(doc):
    t = tasks(doc)
    assert [x.name for x in topological_order(load_spec(RENDERED))] == ["plan", "score", "join"]
    assert t["score"]["withParam"] == "{{tasks.plan.outputs.parameters.shards}}"
    args = {p["name"]: p["value"] for p in t["score"]["arguments"]["parameters"]}
    # every shard gets the version plan resolved, never the alias
    assert args == {"shard": "{{item}}", "model-uri": "{{tasks.plan.outputs.parameters.model-uri}}",
                    "output": "{{workflow.parameters.output}}"}
    assert t["score"]["depends"] == "plan" and t["join"]["depends"] == "score"
    assert t["join"]["arguments"]["artifacts"] == [{"name": "plan", "from": "{{tasks.plan.outputs.artifacts.plan}}"}]
    outputs = {p["name"]: p["valueFrom"]["path"] for p in templates(doc)["plan"]["outputs"]["parameters"]}
    assert outputs == {"shards": f"{common.OUTPUT_ROOT}/plan/{score_cli.SHARDS_FILE}",
                       "model-uri": f"{common.OUTPUT_ROOT}/plan/{score_cli.MODEL_URI_FILE}"}


def test_every_step_retries_infrastructure_errors_only_and_runs_in_a_built_image(doc):
    for name in ("plan", "score-shard", "join"):
        t = templates(doc)[name]
        assert t["retryStrategy"]["expression"] == common.NOT_RETRIED
        assert t["retryStrategy"]["retryPolicy"] == "Always"
        assert t["container"]["image"] == common.stage_image(batch_score.IMAGE)
        assert t["container"]["resources"]["requests"]


def _stand_in(name: str) -> str:
    return {"inputs.parameters.shard": '{"index":0,"count":1,"offset":0,"rows":1,"ranges":[]}',
            "inputs.parameters.shards": "8"}.get(name, f"/x/{name.split('.')[-1]}")


@pytest.mark.parametrize("name", ["plan", "score-shard", "join"])
def test_every_container_calls_the_real_score_cli(doc, name):
    import re

    t = templates(doc)[name]["container"]
    assert t["command"] == ["sentimentops"] and t["args"][0] == "score"
    args = [re.sub(r"\{\{([^}]+)\}\}", lambda m: _stand_in(m.group(1)), a) for a in t["args"][1:]]
    sub = args[0]
    settings, _args = score_cli._parse(sub, args[1:])
    assert settings.text_column == "text"
    env = {e["name"]: e["value"] for e in t["env"]}
    assert env["SENTIMENTOPS_SCORE_TEXT_COLUMN"] == "{{workflow.parameters.text-column}}"
    assert env["SENTIMENTOPS_SCORE_ID_COLUMN"] == "{{workflow.parameters.id-column}}"
