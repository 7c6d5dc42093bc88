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
    assert spec["workflowSpec"]["workflowTemplateRef"]["name"] == training.TEMPLATE_NAME == "sentiment-training"
    # only `reason`: everything else is the template's default, which the chart sets from its values
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
    assert workflow["spec"]["workflowTemplateRef"]["name"] == training.TEMPLATE_NAME
    template = yaml.safe_load((render.RENDERED_DIR / "sentiment-training.yaml").read_text())
    declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    assert [p["name"] for p in workflow["spec"]["arguments"]["parameters"]] == ["reason"]
    assert {"reason"} <= declared
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


def _gjson(data: object, path: str) -> object:
    """The two gjson path shapes the Sensor's filters use: `a.b` and `a.#(k.l=="v")#.c.d` (a query over an array,
    then a field of each match). None: the path does not exist."""
    import re as _re

    m = _re.fullmatch(r'(?P<head>[\w.]+)\.#\((?P<key>[\w.]+)=="(?P<value>[^"]*)"\)#\.(?P<tail>[\w.]+)', path)
    if m is None:
        for key in path.split("."):
            if not isinstance(data, dict) or key not in data:
                return None
            data = data[key]
        return data
    items = _gjson(data, m["head"])
    if not isinstance(items, list):
        return None
    return [_gjson(i, m["tail"]) for i in items if _gjson(i, m["key"]) == m["value"]]


def _passes(filters: dict, body: dict) -> bool:
    """Argo Events' filterData with `or` (pkg/sensors/dependencies/filter.go): a string filter's values are regular
    expressions searched in the value's text (a list's text is its JSON); a missing path does not pass."""
    import json as _json
    import re as _re

    assert filters["dataLogicalOperator"] == "or"
    event = {"header": {}, "body": body}
    for f in filters["data"]:
        value = _gjson(event, f["path"])
        if value is None:
            continue
        text = value if isinstance(value, str) else _json.dumps(value, separators=(",", ":"))
        assert f["type"] == "string"
        if any(_re.search(v, text) for v in f["value"]):
            return True
    return False


def _alert(name: str, status: str) -> dict:
    return {"status": status, "labels": {"alertname": name}, "annotations": {"summary": f"{name} {status}"}}


@pytest.mark.parametrize(("body", "passes"), [
    ({"status": "firing", "alerts": [_alert("DataDrift", "firing")]}, True),
    ({"status": "firing", "alerts": [_alert("HighLatency", "firing"), _alert("DataDrift", "firing")]}, True),
    ({"status": "resolved", "alerts": [_alert("DataDrift", "resolved")]}, False),  # the episode is over
    ({"status": "firing", "alerts": [_alert("HighLatency", "firing")]}, False),
    ({"status": "firing", "alerts": [_alert("DataDriftWarning", "firing")]}, False),  # the exact name only
    ({"reason": "manual: new labelled data"}, True),
    ({"reason": "   "}, False),
    ({"reason": ""}, False),
    ({}, False),
])
def test_sensor_admits_a_firing_drift_alert_or_a_reason(rendered, body, passes):
    (dependency,) = rendered["sensor"]["spec"]["dependencies"]
    assert _passes(dependency["filters"], body) is passes


def test_the_drift_alert_the_sensor_waits_for_exists():
    rules = yaml.safe_load((REPO / "charts/sentimentops/files/monitoring/rules/sentiment-alerts.yaml").read_text())
    alerts = {r.get("alert") for g in rules["groups"] for r in g["rules"]}
    assert triggers.DRIFT_ALERT in alerts


def test_sensor_rate_limits_submissions(rendered):
    (trigger,) = rendered["sensor"]["spec"]["triggers"]
    assert trigger["rateLimit"] == {"unit": "Hour", "requestsPerUnit": 1}
    broken = copy.deepcopy(rendered["sensor"])
    broken["spec"]["triggers"][0]["rateLimit"]["requestsPerUnit"] = "1"  # int32 in the CRD
    assert any("rateLimit" in e for e in manifest_errors(broken))
    broken["spec"]["triggers"][0]["rateLimit"] = {"unit": "Hour", "requestPerUnit": 1}
    assert any("requestPerUnit" in e for e in manifest_errors(broken))


def test_the_cross_file_check_follows_the_workflow_template_refs(rendered, tmp_path, capsys):
    from sentimentops.workflows import cli

    sensor = copy.deepcopy(rendered["sensor"])
    workflow = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]["source"]["resource"]
    workflow["spec"]["arguments"]["parameters"].append({"name": "epoch", "value": "3"})
    cron = copy.deepcopy(rendered["cron"])
    cron["spec"]["workflowSpec"]["workflowTemplateRef"]["name"] = "sentiment-training-v0-1-0"
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "sentiment-training.yaml").write_text((render.RENDERED_DIR / "sentiment-training.yaml").read_text())
    (folder / "sentiment-rollout.yaml").write_text((render.RENDERED_DIR / "sentiment-rollout.yaml").read_text())
    (folder / "sensor.yaml").write_text(yaml.safe_dump(sensor))
    (folder / "cron.yaml").write_text(yaml.safe_dump(cron))
    assert cli.main(["check", *map(str, sorted(folder.glob("*.yaml")))]) == 1
    out = capsys.readouterr().out
    assert "arguments.parameters.epoch: not a parameter of WorkflowTemplate 'sentiment-training'" in out
    assert "workflowTemplateRef: no WorkflowTemplate 'sentiment-training-v0-1-0'" in out
    assert cli.main(["check", *map(str, sorted(render.RENDERED_DIR.glob("*.yaml")))]) == 0
