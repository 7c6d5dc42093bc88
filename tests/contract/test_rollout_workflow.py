"""Contract tests: the rollout WorkflowTemplate and the training DAG's call to it (templateRef): golden render,
strict schema + semantic checks, inputs and the template-level mutex, the `when` branches, the analysis deadline,
the ServiceAccount the chart binds to the rollout Role, and every container's args parsed by the real
`sentimentops rollout` CLI."""
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


def test_the_name_is_stable_and_the_version_is_a_label(doc):
    assert doc["kind"] == "WorkflowTemplate"
    assert doc["metadata"]["name"] == "sentiment-rollout" == rollout.TEMPLATE_NAME
    assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == rollout.package_version()
    assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == "rollout"


def test_parameters_have_descriptions_and_the_runbook_defaults(doc):
    params = {p["name"]: p for p in doc["spec"]["arguments"]["parameters"]}
    assert {k: params[k]["value"] for k in ("model", "canary-percent", "soak", "target")} == {
        "model": "challenger", "canary-percent": "10", "soak": "30m", "target": "kserve"}
    assert params["target"]["enum"] == ["kserve", "local"]
    assert all(p["description"].strip() for p in params.values())
    # contract 3: the deployment's parameters, same names and neutral defaults as in the training template
    assert {k: params[k]["value"] for k in ("image-registry", "mlflow-tracking-uri", "argo-ui-url")} == {
        "image-registry": "", "mlflow-tracking-uri": "", "argo-ui-url": ""}
    assert "artifacts-destination" not in params


def test_the_rollout_template_takes_every_value_as_an_input_and_holds_the_mutex(doc):
    entry = templates(doc)[doc["spec"]["entrypoint"]]
    assert entry["name"] == "rollout" and "dag" in entry
    assert [p["name"] for p in entry["inputs"]["parameters"]] == list(rollout.INPUTS)
    assert entry["synchronization"] == {"mutexes": [{"name": "sentiment-rollout"}]}
    # a workflow holding the same mutex at workflow level would wait for itself
    assert "synchronization" not in doc["spec"]
    # Under a templateRef, {{workflow.parameters.X}} names the *caller's* parameters: nothing the rollout DAG
    # reaches may read them (only the standalone template's own exit handler does).
    reachable = ["rollout", *(t["template"] for t in entry["dag"]["tasks"])]
    for name in reachable:
        assert "workflow.parameters" not in str(templates(doc)[name]), name
    # and the standalone template binds its arguments to those inputs by name (Argo passes spec.arguments to the
    # entrypoint): every input is a parameter of the template
    assert set(rollout.INPUTS) <= {p["name"] for p in doc["spec"]["arguments"]["parameters"]}
    assert doc["spec"]["onExit"] == "notify"


def test_the_analysis_outlives_the_longest_soak(doc):
    from sentimentops.steps.rollout.cli import RolloutSettings, seconds

    analyse = templates(doc)["analyse"]
    deadline = int(analyse["activeDeadlineSeconds"])
    ready = seconds(RolloutSettings.model_fields["ready_timeout"].default)
    interval = seconds(RolloutSettings.model_fields["interval"].default)
    # readiness wait + the longest soak + a last analysis window must fit, with the default soak well inside
    assert ready + seconds(rollout.MAX_SOAK) + interval < deadline == rollout.ANALYSE_DEADLINE_S
    params = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert seconds(params["soak"]) <= seconds(rollout.MAX_SOAK)
    assert rollout.MAX_SOAK in {p["name"]: p for p in doc["spec"]["arguments"]["parameters"]}["soak"]["description"]
    # the other steps are short (a patch, a wait for readiness): no deadline to tune
    assert all("activeDeadlineSeconds" not in templates(doc)[t] for t in ("deploy-canary", "promote", "rollback"))


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


def test_each_step_retries_and_runs_as_the_rollout_service_account(doc):
    sa = yaml.safe_load(VALUES.read_text())["serviceAccounts"]["pipeline"]["name"]
    assert sa == rollout.SERVICE_ACCOUNT  # the chart binds this one to the sentimentops-rollout Role
    assert doc["spec"]["serviceAccountName"] == sa
    assert doc["spec"]["securityContext"]["runAsNonRoot"] is True
    steps = [t for t in templates(doc).values() if "container" in t and t["container"]["args"][0] == "rollout"]
    assert len(steps) == len(TASKS)
    for t in steps:
        # on the template itself: under the training workflow's templateRef the workflow's account is the
        # training one, which the rollout Role does not bind
        assert t["serviceAccountName"] == sa, t["name"]
        assert int(t["retryStrategy"]["limit"]) >= 1 and t["retryStrategy"]["retryPolicy"] == "Always"
        env = {e["name"]: e["value"] for e in t["container"]["env"]}
        assert env["SENTIMENTOPS_MLFLOW_TRACKING_URI"] == "{{inputs.parameters.mlflow-tracking-uri}}"
        assert t["container"]["image"] == ("{{inputs.parameters.image-registry}}/sentimentops-rollout:"
                                           "{{inputs.parameters.image-tag}}")
        assert env["SENTIMENTOPS_IMAGE"] == t["container"]["image"]  # the lineage's image (steps/core/manifests)


def _cli_args(template: dict) -> list[str]:
    typed = {"target": "kserve", "canary-percent": "10"}  # values argparse checks; the rest are free text
    return [re.sub(r"\{\{inputs\.parameters\.([^}]+)\}\}", lambda m: typed.get(m.group(1), "X"),
                   re.sub(r"\{\{outputs[^}]+\}\}", "X", a)) for a in template["container"]["args"]]


def test_every_container_calls_the_real_rollout_cli(doc):
    for t in templates(doc).values():
        if "container" in t and t["container"]["args"][0] == "rollout":
            assert "--artifacts-destination" not in t["container"]["args"]  # the storage URI is on the version
            args = rollout_parser().parse_args(_cli_args(t)[1:])
            assert args.command in {"deploy", "analyse", "promote", "rollback"}
            assert args.out == Path("X")


def test_training_calls_the_rollout_template_after_register_when_promoted_and_enabled(doc, training):
    tasks = dag(training, "pipeline")
    assert not any(name.startswith("rollout-") for name in tasks)  # no copied rollout tasks
    call = tasks["rollout"]
    assert call["templateRef"] == {"name": "sentiment-rollout", "template": "rollout"}
    assert call["depends"] == "register"
    assert call["when"] == ("{{tasks.register.outputs.parameters.promoted}} == true"
                            " && {{workflow.parameters.rollout}} == canary")
    args = {a["name"]: a["value"] for a in call["arguments"]["parameters"]}
    entry = templates(doc)["rollout"]
    assert list(args) == [p["name"] for p in entry["inputs"]["parameters"]]  # every input, nothing else
    assert args["model"] == "challenger"  # what register just aliased
    params = {p["name"]: p for p in training["spec"]["arguments"]["parameters"]}
    for name, value in args.items():  # each from a parameter the training template declares
        if name != "model":
            assert value.startswith("{{workflow.parameters.") and value[22:-2] in params, name
    assert args["soak"] == "{{workflow.parameters.rollout-soak}}"
    assert args["inference-service"] == "{{workflow.parameters.inference-service}}"
    assert params["rollout"]["value"] == "canary" and params["rollout"]["enum"] == ["canary", "skip"]
    assert params["rollout-soak"]["value"] == "30m" and params["rollout-canary-percent"]["value"] == "10"
    # the deployment's parameters have one name and one default in both templates
    mine = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    shared = set(mine) & set(params)
    assert {"inference-service", "prometheus-url", "image-registry", "mlflow-tracking-uri", "argo-ui-url"} <= shared
    assert all(mine[n] == params[n]["value"] for n in shared), shared


@pytest.mark.parametrize("promoted, enabled, runs", [("true", "canary", True), ("false", "canary", False),
                                                      ("true", "skip", False)])
def test_the_gate(training, promoted, enabled, runs):
    when = dag(training, "pipeline")["rollout"]["when"]
    when = when.replace("{{tasks.register.outputs.parameters.promoted}}", promoted)
    assert evaluate_when(when.replace("{{workflow.parameters.rollout}}", enabled)) is runs


def test_a_skipped_deploy_omits_the_rest_in_the_local_runner():
    rollout_spec = load_spec(RENDERED)
    assert [t.name for t in topological_order(rollout_spec)] == TASKS
    analyse = next(t for t in rollout_spec.tasks if t.name == "analyse")
    assert not depends_satisfied(analyse, {"deploy-canary": "Skipped"})
    assert depends_satisfied(analyse, {"deploy-canary": "Succeeded"})
    # the training spec reaches the same DAG through its templateRef
    paths = load_spec(TRAINING).task_paths()
    assert paths[-len(TASKS) - 1:] == ["rollout", *(f"rollout/{t}" for t in TASKS)]


@pytest.mark.parametrize("mutate, expected", [
    (lambda t: t["templateRef"].__setitem__("name", "sentiment-rollout-v0-1-0"),
     "no WorkflowTemplate 'sentiment-rollout-v0-1-0'"),
    (lambda t: t["templateRef"].__setitem__("template", "rolout"), "has no template 'rolout'"),
    (lambda t: t["arguments"]["parameters"].pop(), "input parameters.image-tag of template 'rollout' is not supplied"),
    (lambda t: t["arguments"]["parameters"].append({"name": "artifacts-destination", "value": "x"}),
     "argument parameters.artifacts-destination is not an input"),
])
def test_the_cross_file_check_follows_the_template_ref(doc, training, mutate, expected):
    import copy

    from sentimentops.workflows.checks.semantic_check import reference_errors

    library = {"sentiment-rollout": doc, "sentiment-training": training}
    assert reference_errors([training, doc], library) == []
    broken = copy.deepcopy(training)
    mutate(dag(broken, "pipeline")["rollout"])
    errors = reference_errors([broken], library)
    assert any(expected in e for e in errors), errors
