"""The retraining triggers (workflows/triggers.py): CronWorkflow, webhook EventSource and Sensor, rendered and
checked strictly against the schemas committed in workflows/schemas, and wired consistently to the training
template, Alertmanager and the local webhook."""
from __future__ import annotations

import copy
import zoneinfo
from pathlib import Path

import pytest
import yaml

from sentimentops.workflows import render
from sentimentops.workflows.checks.schema_check import manifest_errors
from sentimentops.workflows.definitions import training, triggers

REPO = Path(__file__).resolve().parents[2]
FILES = {"cron": "sentiment-training-cron.yaml", "eventsource": "sentiment-retrain-eventsource.yaml",
         "sensor": "sentiment-retrain-sensor.yaml"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    return {key: yaml.safe_load((render.RENDERED_DIR / name).read_text()) for key, name in FILES.items()}


def test_rendered_trigger_files_are_up_to_date():
    problems = [p for p in render.stale() if p.split(":")[0] in FILES.values()]
    assert not problems, problems


@pytest.mark.parametrize("key", sorted(FILES))
def test_strict_schema(rendered, key):
    assert manifest_errors(rendered[key]) == []


def test_strict_schema_rejects_a_misspelled_field(rendered):
    cron = copy.deepcopy(rendered["cron"])
    cron["spec"]["concurencyPolicy"] = cron["spec"].pop("concurrencyPolicy")
    assert any("concurencyPolicy" in e for e in manifest_errors(cron))
    sensor = copy.deepcopy(rendered["sensor"])
    sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]["sourse"] = {}
    assert manifest_errors(sensor)


def test_cron_schedule_timezone_and_forbid(rendered):
    spec = rendered["cron"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedules"] and all(len(s.split()) == 5 for s in spec["schedules"])
    zoneinfo.ZoneInfo(spec["timezone"])  # a real IANA zone
    assert spec["workflowSpec"]["workflowTemplateRef"]["name"] == training.template_name()
    assert spec["workflowSpec"]["arguments"]["parameters"] == [{"name": "reason", "value": "cron"}]


def test_template_declares_the_reason_parameter_the_triggers_set():
    template = yaml.safe_load((render.RENDERED_DIR / "sentiment-training.yaml").read_text())
    names = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    assert "reason" in names
    env = template["spec"]["templates"][1]["container"]["env"]
    assert {"name": "SENTIMENTOPS_RUN_REASON", "value": "{{workflow.parameters.reason}}"} in env


def test_sensor_submits_the_template_with_the_reason_from_the_event(rendered):
    source, sensor = rendered["eventsource"], rendered["sensor"]
    (dependency,) = sensor["spec"]["dependencies"]
    assert dependency["eventSourceName"] == source["metadata"]["name"]
    assert dependency["eventName"] in source["spec"]["webhook"]
    (trigger,) = sensor["spec"]["triggers"]
    argo = trigger["template"]["argoWorkflow"]
    assert argo["operation"] == "submit"
    workflow = argo["source"]["resource"]
    assert manifest_errors(workflow) == []  # the inline Workflow is itself a valid, strict Workflow
    assert workflow["spec"]["workflowTemplateRef"]["name"] == training.template_name()
    (param,) = argo["parameters"]
    assert param["src"]["dependencyName"] == dependency["name"]
    assert ".Input.body.reason" in param["src"]["dataTemplate"] and ".annotations.summary" in param["src"]["dataTemplate"]
    index = int(param["dest"].split(".")[-2])
    assert param["dest"] == f"spec.arguments.parameters.{index}.value"
    assert workflow["spec"]["arguments"]["parameters"][index]["name"] == "reason"


def test_alertmanager_drift_route_posts_to_the_eventsource_with_its_token(rendered):
    webhook = rendered["eventsource"]["spec"]["webhook"]["drift"]
    config = yaml.safe_load((REPO / "charts" / "sentimentops" / "files" / "monitoring" / "alertmanager" / "alertmanager.yaml").read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "retrain-webhook"]
    (hook,) = receiver["webhook_configs"]
    name = rendered["eventsource"]["metadata"]["name"]
    assert hook["url"].startswith(f"http://{name}-eventsource-svc.")
    assert hook["url"].endswith(f":{webhook['port']}{webhook['endpoint']}")
    assert webhook["authSecret"]["name"] and hook["http_config"]["authorization"]["credentials_file"]


def test_local_webhook_mirrors_the_eventsource():
    import argparse

    from sentimentops.steps.drift.webhook import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--run-root", "x"])
    assert str(args.port) == triggers.WEBHOOK_PORT and args.path == triggers.WEBHOOK_PATH
