"""Contract tests: the rollout WorkflowTemplate and the rollout tasks chained into the training DAG: golden render,
strict schema + semantic checks, the `when` branches, the ServiceAccount the chart binds to the rollout Role, and
every container's args parsed by the real `sentimentops rollout` CLI."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sentimentops.steps.rollout.cli import parser as rollout_parser
from sentimentops.workflows import render
from sentimentops.workflows.argo.expressions import evaluate_when
from sentimentops.workflows.argo.spec import depends_satisfied, load_spec, topological_order
from sentimentops.workflows.checks.schema_check import schema_errors
from sentimentops.workflows.checks.semantic_check import semantic_errors
from sentimentops.workflows.definitions import rollout

RENDERED = render.RENDERED_DIR / "sentiment-rollout.yaml"
TRAINING = render.RENDERED_DIR / "sentiment-training.yaml"
VALUES = Path(__file__).resolve().parents[2] / "charts" / "sentimentops" / "values.yaml"
TASKS = ["deploy-canary", "analyse", "promote", "rollback"]


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(RENDERED.read_text())


@pytest.fixture(scope="module")
def training() -> dict:
    return yaml.safe_load(TRAINING.read_text())


def templates(d: dict) -> dict[str, dict]:
    return {t["name"]: t for t in d["spec"]["templates"]}


def dag(d: dict, name: str) -> dict[str, dict]:
    return {t["name"]: t for t in templates(d)[name]["dag"]["tasks"]}


def test_committed_yaml_equals_a_fresh_render():
    assert render.render_all()["sentiment-rollout.yaml"] == RENDERED.read_text(), "run `sentimentops render`"


def test_both_templates_pass_strict_schema_and_semantic_checks(doc, training):
    for d in (doc, training):
        assert schema_errors(d) == [] and semantic_errors(d) == []


def test_name_carries_the_package_version(doc):
    version = rollout.package_version()
    assert doc["kind"] == "WorkflowTemplate"
    assert doc["metadata"]["name"] == "sentiment-rollout-v" + version.replace(".", "-")
    assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == "rollout"


def test_parameters_have_descriptions_and_the_runbook_defaults(doc):
    params = {p["name"]: p for p in doc["spec"]["arguments"]["parameters"]}
    assert {k: params[k]["value"] for k in ("model", "canary-percent", "soak", "target")} == {
        "model": "challenger", "canary-percent": "10", "soak": "30m", "target": "kserve"}
    assert params["target"]["enum"] == ["kserve", "local"]
    assert all(p["description"].strip() for p in params.values())


def test_deploy_then_analyse_then_exactly_one_of_promote_and_rollback(doc):
    tasks = dag(doc, "rollout")
    assert list(tasks) == TASKS
    assert "depends" not in tasks["deploy-canary"]
    assert tasks["analyse"]["depends"] == "deploy-canary.Succeeded"
    for action in ("promote", "rollback"):
        assert tasks[action]["depends"] == "analyse.Succeeded"
        assert tasks[action]["when"] == f"{{{{tasks.analyse.outputs.parameters.decision}}}} == {action}"
    for decision, runs in (("promote", "promote"), ("rollback", "rollback")):
        chosen = [a for a in ("promote", "rollback")
                  if evaluate_when(tasks[a]["when"].replace("{{tasks.analyse.outputs.parameters.decision}}",
                                                            decision))]
        assert chosen == [runs]
    analyse = templates(doc)["analyse"]["outputs"]
    folder = analyse["artifacts"][0]["path"]
    assert analyse["parameters"] == [{"name": "decision", "valueFrom": {"path": f"{folder}/decision"}}]


def test_each_step_retries_and_runs_as_the_rollout_service_account(doc, training):
    sa = yaml.safe_load(VALUES.read_text())["serviceAccounts"]["pipeline"]["name"]
    assert sa == rollout.SERVICE_ACCOUNT  # the chart binds this one to the sentimentops-rollout Role
    assert doc["spec"]["serviceAccountName"] == sa
    assert doc["spec"]["securityContext"]["runAsNonRoot"] is True
    for d in (doc, training):
        for name, t in templates(d).items():
            if "container" in t and "rollout" in t["container"]["args"][:1]:
                assert t["serviceAccountName"] == sa, name
                assert int(t["retryStrategy"]["limit"]) >= 1 and t["retryStrategy"]["retryPolicy"] == "Always"


def _cli_args(template: dict) -> list[str]:
    typed = {"target": "kserve", "canary-percent": "10"}  # values argparse checks; the rest are free text
    return [re.sub(r"\{\{inputs\.parameters\.([^}]+)\}\}", lambda m: typed.get(m.group(1), "X"),
                   re.sub(r"\{\{outputs[^}]+\}\}", "X", a)) for a in template["container"]["args"]]


def test_every_container_calls_the_real_rollout_cli(doc, training):
    for d in (doc, training):
        for t in templates(d).values():
            if "container" in t and t["container"]["args"][0] == "rollout":
                args = rollout_parser().parse_args(_cli_args(t)[1:])
                assert args.command in {"deploy", "analyse", "promote", "rollback"}
                assert args.out == Path("X")


def test_training_chains_the_same_tasks_after_register_when_promoted_and_enabled(doc, training):
    tasks = dag(training, "pipeline")
    names = [f"rollout-{t}" for t in TASKS]
    assert [n for n in tasks if n.startswith("rollout-")] == names
    deploy = tasks["rollout-deploy-canary"]
    assert deploy["depends"] == "register"
    assert deploy["when"] == ("{{tasks.register.outputs.parameters.promoted}} == true"
                              " && {{workflow.parameters.rollout}} == canary")
    assert tasks["rollout-analyse"]["depends"] == "rollout-deploy-canary.Succeeded"
    args = {a["name"]: a["value"] for a in deploy["arguments"]["parameters"]}
    assert args["model"] == "challenger"  # what register just aliased
    # The same containers as the standalone template (names and the run-reason env aside).
    for task in TASKS:
        mine, theirs = templates(training)[f"rollout-{task}"], templates(doc)[task]
        assert mine["container"]["args"] == theirs["container"]["args"]
        assert mine["container"]["image"] == theirs["container"]["image"]
    params = {p["name"]: p for p in training["spec"]["arguments"]["parameters"]}
    assert params["rollout"]["value"] == "canary" and params["rollout"]["enum"] == ["canary", "skip"]
    assert params["rollout-soak"]["value"] == "30m" and params["rollout-canary-percent"]["value"] == "10"


@pytest.mark.parametrize("promoted, enabled, runs", [("true", "canary", True), ("false", "canary", False),
                                                      ("true", "skip", False)])
def test_the_gate(training, promoted, enabled, runs):
    when = dag(training, "pipeline")["rollout-deploy-canary"]["when"]
    when = when.replace("{{tasks.register.outputs.parameters.promoted}}", promoted)
    assert evaluate_when(when.replace("{{workflow.parameters.rollout}}", enabled)) is runs


def test_a_skipped_deploy_omits_the_rest_in_the_local_runner():
    spec = load_spec(TRAINING)
    order = [t.name for t in topological_order(spec)]
    assert order[-4:] == [f"rollout-{t}" for t in TASKS]
    analyse = next(t for t in spec.tasks if t.name == "rollout-analyse")
    assert not depends_satisfied(analyse, {"rollout-deploy-canary": "Skipped"})
    assert depends_satisfied(analyse, {"rollout-deploy-canary": "Succeeded"})
    assert [t.name for t in topological_order(load_spec(RENDERED))] == TASKS
