"""Contract tests: the rendered training WorkflowTemplate against the golden file, the upstream schemas (strict),
the semantic checks, the stage CLI contract (docs/stages.md), the cluster conventions (ARCHITECTURE.md: stable
names, retries, deadlines, exit handler, workflow metrics) and the parameters the chart sets from its values."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sentimentops.workflows import cli, render
from sentimentops.workflows.argo.expressions import evaluate_expr, evaluate_when
from sentimentops.workflows.argo.spec import load_spec, topological_order
from sentimentops.workflows.checks.schema_check import manifest_errors, schema_errors
from sentimentops.workflows.checks.semantic_check import semantic_errors
from sentimentops.workflows.definitions import training

RENDERED = render.RENDERED_DIR / "sentiment-training.yaml"

# docs/stages.md, the stage table: stage -> (flags from parameters, input artifacts, output artifact).
STAGE_CONTRACT = {
    "ingest": (["--source", "--sample-size", "--test-size", "--val-fraction", "--seed"], [], "dataset"),
    "validate": ([], ["dataset"], "validation"),
    "version": ([], ["dataset"], "version"),
    "train": (["--base-model", "--epochs", "--batch-size", "--learning-rate", "--max-length", "--seed"],
              ["dataset", "version"], "model"),
    "evaluate": ([], ["dataset", "model"], "evaluation"),
    # register gets the dataset explicitly (its test split checks the int8 ONNX export in the cluster too; it once
    # globbed the local runner's folders, so on Argo the check never ran).
    "register": ([], ["dataset", "model", "evaluation", "version"], "registration"),
}


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(RENDERED.read_text())


@pytest.fixture()
def mutable(doc) -> dict:
    return copy.deepcopy(doc)


def templates(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["spec"]["templates"]}


def test_committed_yaml_equals_a_fresh_render():
    assert render.render_all()["sentiment-training.yaml"] == RENDERED.read_text(), "run `sentimentops render`"
    assert cli.main(["render", "--check"]) == 0


def test_render_check_fails_on_a_stale_file(tmp_path, capsys):
    (tmp_path / "sentiment-training.yaml").write_text(RENDERED.read_text().replace("'42'", "'43'"))
    assert cli.main(["render", "--check", "--out-dir", str(tmp_path)]) == 1
    assert "differs" in capsys.readouterr().out


def test_rendered_template_passes_strict_schema_and_semantic_checks(doc):
    assert schema_errors(doc) == []
    assert semantic_errors(doc) == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"].__setitem__("ttlStrategyy", {}), "'ttlStrategyy' was unexpected"),
    (lambda d: templates(d)["train"]["container"].__setitem__("resource", {}), "'resource' was unexpected"),
    (lambda d: d["spec"]["synchronization"].__setitem__("mutex", {"name": "x"}), "'mutex' was unexpected"),
    (lambda d: d["metadata"].__setitem__("lables", {}), "'lables' was unexpected"),
    (lambda d: templates(d)["train"]["retryStrategy"].__setitem__("limit", [2]), "is not valid"),
    (lambda d: d["spec"]["ttlStrategy"].__setitem__("secondsAfterSuccess", "1d"), "is not of type 'integer'"),
])
def test_strict_schema_rejects_typos_and_wrong_types(mutable, mutate, expected):
    mutate(mutable)
    assert any(expected in e for e in schema_errors(mutable)), schema_errors(mutable)


def _task(d: dict, name: str) -> dict:
    return next(t for t in templates(d)["pipeline"]["dag"]["tasks"] if t["name"] == name)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: templates(d)["validate"].pop("retryStrategy"), "validate: no retryStrategy"),
    (lambda d: _task(d, "train").__setitem__("template", "trian"), "template 'trian' does not exist"),
    (lambda d: _task(d, "train").__setitem__("depends", "versoin"), "depends on unknown task 'versoin'"),
    (lambda d: _task(d, "ingest").__setitem__("depends", "register"), "dependency cycle"),
    (lambda d: _task(d, "evaluate")["arguments"]["artifacts"][1].__setitem__(
        "from", "{{tasks.train.outputs.artifacts.modle}}"), "declares no output 'artifacts.modle'"),
    (lambda d: _task(d, "validate")["arguments"]["artifacts"][0].__setitem__(
        "from", "{{tasks.register.outputs.artifacts.registration}}"), "not an ancestor"),
    (lambda d: _task(d, "train")["arguments"]["parameters"].pop(0), "base-model of template 'train' is not supplied"),
    (lambda d: d["spec"]["arguments"]["parameters"][0].pop("description"), "source: no description"),
    (lambda d: templates(d)["train"]["container"]["args"].append("{{inputs.parameters.epoch}}"), "not declared"),
    (lambda d: templates(d)["train"]["container"]["args"].append("{{workflow.parameters.epoch}}"),
     "names no workflow parameter"),
    (lambda d: _task(d, "register").__setitem__("when", "{{tasks.evaluate.outputs.result}} + 1"), "register.when"),
])
def test_semantic_checks_catch_what_the_schema_cannot(mutable, mutate, expected):
    mutate(mutable)
    errors = semantic_errors(mutable)
    assert any(expected in e for e in errors), errors


def test_the_name_is_stable_and_the_version_is_a_label(doc):
    # The chart, the cron, the Sensor and `argo submit --from` name the template across releases.
    version = training.package_version()
    assert doc["kind"] == "WorkflowTemplate"
    assert doc["metadata"]["name"] == "sentiment-training" == training.TEMPLATE_NAME
    assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "sentimentops"
    assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == version
    assert doc["spec"]["workflowMetadata"]["labels"]["app.kubernetes.io/version"] == version
    assert version not in doc["metadata"]["name"]


# Contract 3 (issue 12): what the chart sets in every template from its values; neutral here.
CHART_PARAMETERS = {
    "image-registry": "", "image-tag": training.package_version(), "mlflow-tracking-uri": "",
    "mlflow-artifacts-destination": "", "dvc-remote": "", "prometheus-url": "http://prometheus-operated.monitoring.svc:9090",
    "inference-service": "sentiment", "argo-ui-url": "", "production-store": "",
}
# Which stage container gets which of them as env (beyond profile, reason and the workflow name).
STAGE_ENV = {"SENTIMENTOPS_MLFLOW_TRACKING_URI": ("mlflow-tracking-uri", set(STAGE_CONTRACT)),
             "SENTIMENTOPS_VERSION_REMOTE": ("dvc-remote", {"version"}),
             "SENTIMENTOPS_PRODUCTION_STORE": ("production-store", {"ingest"}),
             "SENTIMENTOPS_MLFLOW_ARTIFACTS_DESTINATION": ("mlflow-artifacts-destination", {"register"})}


def test_chart_parameters_have_neutral_defaults_and_no_deployment_is_named(doc):
    params = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert {k: params[k] for k in CHART_PARAMETERS} == CHART_PARAMETERS
    assert "artifacts-destination" not in params and "rollout-artifacts-destination" not in params
    for path in render.RENDERED_DIR.glob("*.yaml"):  # no registry, project or bucket anywhere in workflows/
        text = path.read_text()
        for needle in ("pkg.dev", "gcr.io", "docker.io", "gs://sentimentops", "europe-west"):
            assert needle not in text, (path.name, needle)


def test_containers_call_the_stage_clis_of_docs_stages_md(doc):
    tpls = templates(doc)
    for stage, (param_flags, inputs, output) in STAGE_CONTRACT.items():
        c = tpls[stage]["container"]
        assert c["command"] == ["sentimentops"]
        args = c["args"]
        assert args[0] == stage
        pairs = dict(zip(args[1::2], args[2::2], strict=True))
        for flag in param_flags:
            assert pairs[flag] == f"{{{{inputs.parameters.{flag[2:]}}}}}"
        for art in inputs:
            assert pairs[f"--{art}"] == f"{{{{inputs.artifacts.{art}.path}}}}"
        assert pairs["--out"] == f"{{{{outputs.artifacts.{output}.path}}}}"
        assert set(pairs) == {*param_flags, *(f"--{a}" for a in inputs), "--out"}
        registry, tag = "{{workflow.parameters.image-registry}}", "{{workflow.parameters.image-tag}}"
        assert c["image"] == f"{registry}/sentimentops-{stage}:{tag}"
        env = {e["name"]: e["value"] for e in c["env"]}
        expected = {"SENTIMENTOPS_PROFILE": "{{workflow.parameters.profile}}",
                    "SENTIMENTOPS_RUN_REASON": "{{workflow.parameters.reason}}",
                    "SENTIMENTOPS_WORKFLOW_NAME": "{{workflow.name}}",
                    # issue 13: the step records the image it ran in: the very expression of its `image`
                    "SENTIMENTOPS_IMAGE": c["image"]}
        expected |= {var: f"{{{{workflow.parameters.{param}}}}}" for var, (param, stages) in STAGE_ENV.items()
                     if stage in stages}
        assert env == expected, stage


def test_register_exposes_promoted_from_its_output_folder(doc):
    reg = templates(doc)["register"]["outputs"]
    folder = reg["artifacts"][0]["path"]
    assert reg["parameters"] == [{"name": "promoted", "valueFrom": {"path": f"{folder}/promoted"}}]


def test_train_runs_on_the_gpu_pool(doc):
    train = templates(doc)["train"]
    assert train["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in \
        train["tolerations"]
    assert train["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}
    others = [t for name, t in templates(doc).items() if name != "train" and "container" in t]
    assert all("nvidia.com/gpu" not in str(t) for t in others)


def test_retries_are_explicit_and_a_failed_validation_is_not_retried(doc):
    for name, t in templates(doc).items():
        if "container" in t:
            retry = t["retryStrategy"]
            assert int(retry["limit"]) >= 1 and retry["retryPolicy"] and retry["backoff"]["duration"], name
    assert templates(doc)["validate"]["retryStrategy"]["retryPolicy"] == "OnError"
    assert "expression" not in templates(doc)["validate"]["retryStrategy"]  # OnError: pod errors only


@pytest.mark.parametrize("stage", ["ingest", "version", "train", "evaluate", "register"])
def test_retry_expression_is_the_one_definition(doc, stage):
    retry = templates(doc)[stage]["retryStrategy"]
    assert retry["retryPolicy"] == "Always"
    assert retry["expression"] == training.NOT_RETRIED


DEADLINE_KILL = "Pod was active on the node longer than the specified deadline"  # the kubelet's pod message


@pytest.mark.parametrize(("status", "exit_code", "message", "retried"), [
    ("Failed", "1", "Error (exit code 1)", False),  # data error: the same data fails again
    ("Failed", "2", "Error (exit code 2)", False),  # usage error: a bad base model, a bad flag
    ("Failed", "3", "Error (exit code 3)", True),  # anything else: a hub, GCS or MLflow hiccup, a CUDA fault
    ("Failed", "137", "OOMKilled (exit code 137)", True),
    ("Error", "-1", "pod deleted", True),  # eviction, preemption, a lost node: no exit code
    ("Failed", "137", DEADLINE_KILL, False),  # activeDeadlineSeconds: a hung step would hang again
])
def test_train_retries_infrastructure_errors_only(doc, status, exit_code, message, retried):
    # The rendered expression, evaluated as expr-lang with the variables Argo binds (all strings: docs/variables.md,
    # "RetryStrategy"); a typo in an operator, a changed exit table or a dropped clause fails this table.
    from sentimentops.steps.core.errors import NOT_RETRIED as TABLE

    expression = templates(doc)["train"]["retryStrategy"]["expression"]
    variables = {"lastRetry.status": status, "lastRetry.exitCode": exit_code, "lastRetry.message": message,
                 "lastRetry.duration": "12.5"}
    assert evaluate_expr(expression, variables) is retried
    if status == "Failed" and message != DEADLINE_KILL:
        assert (int(exit_code) in TABLE) is (not retried)


def test_train_has_a_deadline_and_the_others_run_to_completion(doc):
    tpls = templates(doc)
    assert tpls["train"]["activeDeadlineSeconds"] == training.TRAIN_DEADLINE_S
    # at least an hour (the default 2 epochs on a T4 take well under 30 min), at most a working day of GPU time
    assert 3600 <= int(tpls["train"]["activeDeadlineSeconds"]) <= 8 * 3600


def test_register_gets_the_ingest_dataset(doc):
    task = _task(doc, "register")
    froms = {a["name"]: a["from"] for a in task["arguments"]["artifacts"]}
    assert froms["dataset"] == "{{tasks.ingest.outputs.artifacts.dataset}}"
    assert froms == {"dataset": "{{tasks.ingest.outputs.artifacts.dataset}}",
                     "model": "{{tasks.train.outputs.artifacts.model}}",
                     "evaluation": "{{tasks.evaluate.outputs.artifacts.evaluation}}",
                     "version": "{{tasks.version.outputs.artifacts.version}}"}


def test_workflow_level_settings(doc):
    spec = doc["spec"]
    assert spec["synchronization"] == {"mutexes": [{"name": "sentiment-training"}]}
    assert spec["onExit"] == "notify"
    assert spec["ttlStrategy"]["secondsAfterFailure"] >= spec["ttlStrategy"]["secondsAfterSuccess"]
    assert spec["podGC"]["strategy"] == "OnPodSuccess"
    params = {p["name"]: p for p in spec["arguments"]["parameters"]}
    assert {k: params[k]["value"] for k in ("source", "sample-size", "test-size", "val-fraction", "seed",
            "base-model", "epochs", "batch-size", "learning-rate", "max-length", "profile", "reason")} == {
        "source": "hf:stanfordnlp/imdb", "sample-size": "0", "test-size": "0", "val-fraction": "0.1",
        "seed": "42", "base-model": "distilbert-base-uncased", "epochs": "2", "batch-size": "0",
        "learning-rate": "5e-5", "max-length": "512", "profile": "gke", "reason": "manual"}
    assert all(p["description"] for p in params.values())


def test_numbers_like_strings_are_quoted_for_go_yaml():
    # Go's YAML reads a bare 5e-5 as a float; the API server then rejects a non-string parameter value.
    assert "value: '5e-5'" in RENDERED.read_text()
    assert render.to_yaml({"a": "5e-5", "b": "1.0", "c": "on", "d": "text"}) == "a: '5e-5'\nb: '1.0'\nc: 'on'\nd: text\n"


def test_the_local_runner_reads_the_rendered_dag_in_stage_order():
    spec = load_spec(RENDERED)
    order = [t.name for t in topological_order(spec)]
    assert order[:len(STAGE_CONTRACT)] == list(STAGE_CONTRACT)
    # then the call to the canary rollout's template (tests/contract/test_rollout_workflow.py)
    assert order[len(STAGE_CONTRACT):] == ["rollout"]
    assert spec.on_exit is not None and spec.on_exit.name == "notify"


# Contract 5: the exit handler's command line, which `sentimentops notify` (steps/notify.py) parses.
NOTIFY_COMMAND = ("sentimentops notify --workflow {{workflow.name}} --namespace {{workflow.namespace}} "
                  "--status {{workflow.status}} --failures {{workflow.failures}} --reason {{workflow.parameters.reason}} "
                  "--duration {{workflow.duration}} --ui-url {{workflow.parameters.argo-ui-url}}")


def test_the_exit_handler_posts_the_outcome(doc):
    notify = templates(doc)["notify"]
    c = notify["container"]
    assert " ".join([*c["command"], *c["args"]]) == NOTIFY_COMMAND
    assert c["image"] == "{{workflow.parameters.image-registry}}/sentimentops-rollout:{{workflow.parameters.image-tag}}"
    (secret,) = [e for e in c["env"] if "valueFrom" in e]
    assert secret == {"name": "SENTIMENTOPS_NOTIFY_SLACK_WEBHOOK_URL", "valueFrom": {"secretKeyRef": {
        "name": "sentiment-alertmanager-slack", "key": "webhook-url", "optional": True}}}
    assert notify["retryStrategy"]["retryPolicy"] == "OnError"  # a Slack failure is logged, never retried
    # it is no task of the DAG: Argo runs it once the DAG is over, whatever the outcome
    assert all(t.get("template") != "notify" for t in templates(doc)["pipeline"]["dag"]["tasks"])


# Variables Argo sets for workflow-level metrics once the workflow is complete (operator.go: workflow.status after
# the exit handler, creationTimestamp.s in setGlobalParameters; docs/variables.md).
METRIC_VARIABLES = {"workflow.status", "workflow.creationTimestamp.s", "workflow.duration"}


@pytest.mark.parametrize(("status", "emitted"), [("Succeeded", {"sentimentops_training_last_success_timestamp"}),
                                                  ("Failed", {"sentimentops_training_failures"}),
                                                  ("Error", {"sentimentops_training_failures"})])
def test_workflow_metrics_record_the_last_success_and_count_failures(doc, status, emitted):
    import re

    metrics = {m["name"]: m for m in doc["spec"]["metrics"]["prometheus"]}
    assert set(metrics) == {"sentimentops_training_last_success_timestamp", "sentimentops_training_failures"}
    assert all(m["labels"] == [{"key": "template", "value": "sentiment-training"}] for m in metrics.values())
    assert all(set(re.findall(r"\{\{([^}]+)\}\}", str(m))) <= METRIC_VARIABLES for m in metrics.values())
    assert metrics["sentimentops_training_last_success_timestamp"]["gauge"]["value"] == "{{workflow.creationTimestamp.s}}"
    assert metrics["sentimentops_training_failures"]["counter"]["value"] == "1"
    fired = {name for name, m in metrics.items() if evaluate_when(m["when"].replace("{{workflow.status}}", status))}
    assert fired == emitted


# The checker is generic: later manifests (InferenceService, PrometheusRule, EventSource, CronWorkflow) reuse it.
def test_checker_handles_other_kinds_with_the_readme_fixes():
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "s"},
            "spec": {"predictor": {"canaryTrafficPercent": 150, "model": {"modelFormat": {"name": "pytorch"}}}}}
    assert any("150 is greater than the maximum of 100" in e for e in manifest_errors(isvc))
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 10
    assert manifest_errors(isvc) == []
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "r"},
            "spec": {"groups": [{"name": "g", "partial_response_strategy": "warn",
                                 "rules": [{"alert": "A", "expr": "up == 0", "for": "5m"}]}]}}
    assert manifest_errors(rule) == []
    source = {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventSource", "metadata": {"name": "drift"},
              "spec": {"webhook": {"drift": {"endpoint": "/drift", "method": "POST", "port": "12000"}}}}
    assert manifest_errors(source) == []
    cron = {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow", "metadata": {"name": "nightly"},
            "spec": {"schedules": ["0 3 * * *"], "concurrencyPolicy": "Forbid",
                     "workflowSpec": {"workflowTemplateRef": {"name": "sentiment-training"},
                                      "arguments": {"parameters": [{"name": "reason", "value": "cron"}]}}}}
    assert manifest_errors(cron) == []
    cron["spec"]["schedule"] = "0 3 * * *"  # removed in Argo 4: `schedules` only
    assert any("'schedule' was unexpected" in e for e in manifest_errors(cron))


def test_cli_check_reports_problems(tmp_path, capsys):
    bad = yaml.safe_load(RENDERED.read_text())
    bad["spec"]["templates"][0]["retryStrategyy"] = bad["spec"]["templates"][0].pop("retryStrategy")
    path = Path(tmp_path / "bad.yaml")
    path.write_text(yaml.safe_dump(bad))
    assert cli.main(["check", str(RENDERED)]) == 0
    assert cli.main(["check", str(path)]) == 1
    assert "retryStrategyy" in capsys.readouterr().out
