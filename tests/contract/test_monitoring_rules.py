"""The alert and recording rules, their promtool unit tests, the Alertmanager routes and templates, and the
dashboards' metric names: checked with the real Prometheus tools from Debian (promtool, amtool).

When CI=true a missing tool FAILS these tests (the project's set-up installs prometheus and
prometheus-alertmanager); on a laptop without them they are skipped with the install line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "charts" / "sentimentops" / "files" / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yaml"))
RULE_TESTS = sorted((MONITORING / "tests").glob("*_test.yaml"))
ALERTMANAGER = MONITORING / "alertmanager" / "alertmanager.yaml"
INSTALL = "apt-get install -y prometheus prometheus-alertmanager"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed; CI must install it: {INSTALL}")
        pytest.skip(f"{name} not installed ({INSTALL})")
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> dict[str, dict]:
    found = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.update({r["alert"]: r for r in group["rules"] if "alert" in r})
    return found


def test_the_required_alerts_exist_with_their_thresholds():
    rules = alerts()
    assert {"HighLatency", "HighErrorRate", "DataDrift", "LowConfidence", "ModelNotReady", "TrainingWorkflowFailed",
            "NoSuccessfulRetrain"} <= set(rules)
    assert "> 0.5" in rules["HighLatency"]["expr"] and rules["HighLatency"]["for"] == "5m"
    assert "> 0.01" in rules["HighErrorRate"]["expr"] and rules["HighErrorRate"]["for"] == "5m"
    assert "> 0.2" in rules["DataDrift"]["expr"] and rules["DataDrift"]["labels"]["action"] == "retrain"
    assert "< 0.8" in rules["LowConfidence"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


def test_runbook_urls_are_repository_paths_of_runbook_sections():
    """The rule files hold `docs/runbook.md#<alert in lower case>`, a path promtool tests as is; the chart prefixes
    it with the value monitoring.runbookBaseUrl (docs/monitoring.md, "Runbook links"). The anchor must be a heading
    of docs/runbook.md (GitHub's anchor: the heading in lower case)."""
    runbook = (REPO / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#{1,6} (.+)$", runbook, re.MULTILINE)}
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbook.md#{name.lower()}", (name, url)
        assert name.lower() in anchors, f"docs/runbook.md has no section `{name}` for {url}"


def test_training_alerts_read_the_series_the_training_template_exports():
    """Contract: Argo prefixes a custom metric with `argo_workflows_` and exposes a counter with `_total`."""
    template = yaml.safe_load((REPO / "charts" / "sentimentops" / "files" / "workflows" /
                               "sentiment-training.yaml").read_text())
    exported = set()
    for metric in template["spec"]["metrics"]["prometheus"]:
        labels = {label["key"]: label["value"] for label in metric.get("labels", [])}
        assert labels == {"template": "sentiment-training"}, metric["name"]
        suffix = "_total" if "counter" in metric else ""
        exported.add(f"argo_workflows_{metric['name']}{suffix}")
    text = (MONITORING / "rules" / "sentiment-training.yaml").read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    used = set(re.findall(r"\bargo_workflows_\w+", code))
    assert used == exported == {"argo_workflows_sentimentops_training_last_success_timestamp",
                                "argo_workflows_sentimentops_training_failures_total"}
    assert code.count('{template="sentiment-training"}') >= len(re.findall(r"\bargo_workflows_\w+", code))


TRAINING_MUTATIONS = [
    # Without the latch, a controller restart silences NoSuccessfulRetrain (the gauge is gone).
    ("""            or
            sentiment:training_last_success_timestamp_seconds:latched
""", "", "NoSuccessfulRetrain"),
    # Without the new-series branch, the first failure after a controller start goes unseen (increase() of a
    # counter born at 1 is 0).
    ("""            or
            (
              argo_workflows_sentimentops_training_failures_total{template="sentiment-training"}
              unless
              argo_workflows_sentimentops_training_failures_total{template="sentiment-training"} offset 1h
            )
""", "", "TrainingWorkflowFailed"),
]


@pytest.mark.parametrize(("old", "new", "alert"), TRAINING_MUTATIONS, ids=[m[2] for m in TRAINING_MUTATIONS])
def test_training_alert_tests_catch_a_rule_without_its_controller_restart_guard(tmp_path, old, new, alert):
    promtool = tool("promtool")
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    text = (MONITORING / "rules" / "sentiment-training.yaml").read_text()
    assert old in text
    (tmp_path / "rules" / "sentiment-training.yaml").write_text(text.replace(old, new))
    shutil.copy(MONITORING / "tests" / "training_test.yaml", tmp_path / "tests")
    done = run(promtool, "test", "rules", "training_test.yaml", cwd=tmp_path / "tests")
    assert done.returncode != 0 and f"alertname: {alert}" in done.stdout + done.stderr, done.stdout


def test_promtool_check_rules():
    promtool = tool("promtool")
    for path in RULE_FILES:
        done = run(promtool, "check", "rules", str(path))
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass():
    promtool = tool("promtool")
    done = run(promtool, "test", "rules", *[p.name for p in RULE_TESTS], cwd=MONITORING / "tests")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_promtool_unit_tests_can_fail(tmp_path):
    # Raising the DataDrift threshold must break its "fires" test: the unit tests really pin the rules.
    promtool = tool("promtool")
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    for path in RULE_FILES:
        (tmp_path / "rules" / path.name).write_text(path.read_text().replace("(sentiment_drift_psi) > 0.2",
                                                                             "(sentiment_drift_psi) > 2"))
    shutil.copy(MONITORING / "tests" / "alerts_test.yaml", tmp_path / "tests")
    done = run(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path / "tests")
    assert done.returncode != 0 and "DataDrift" in done.stdout + done.stderr


def test_every_alert_has_a_test_that_fires_stays_quiet_and_resolves():
    cases: dict[str, dict[str, bool]] = {name: {"fires": False, "quiet": False, "resolves": False}
                                         for name in alerts()}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            checks = sorted(test.get("alert_rule_test", []), key=lambda c: _minutes(c["eval_time"]))
            for name, kinds in cases.items():
                mine = [bool(c.get("exp_alerts")) for c in checks if c["alertname"] == name]
                if not mine:
                    continue
                kinds["fires"] |= any(mine)
                kinds["quiet"] |= not any(mine)  # a whole test in which it never fires
                kinds["resolves"] |= any(mine) and not mine[-1]
    missing = {name: [k for k, ok in kinds.items() if not ok] for name, kinds in cases.items() if not all(kinds.values())}
    assert not missing, f"alerts without a fires/quiet/resolves promtool test: {missing}"


def _minutes(text: str) -> float:
    """A Prometheus duration (`90s`, `12m`, `8d1h`) in minutes."""
    parts = re.findall(r"(\d+)([smhd])", text)
    assert parts and "".join(v + u for v, u in parts) == text, text
    return sum(int(value) * {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}[unit] for value, unit in parts)


def test_rule_groups_wrap_into_a_valid_prometheusrule():
    from sentimentops.workflows.checks.schema_check import manifest_errors

    for path in RULE_FILES:
        doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
               "metadata": {"name": path.stem, "labels": {"release": "kube-prometheus-stack"}},
               "spec": yaml.safe_load(path.read_text())}
        assert manifest_errors(doc) == [], path


def contract_metrics() -> set[str]:
    text = (REPO / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `(sentiment_\w+)`", text, flags=re.MULTILINE))


def test_rules_and_dashboards_use_only_contract_metrics():
    known = contract_metrics()
    assert "sentiment_drift_psi" in known and "sentiment_request_duration_seconds" in known
    texts = [p.read_text() for p in RULE_FILES + sorted((MONITORING / "dashboards").glob("*.json"))]
    used = {m for text in texts for m in re.findall(r"\bsentiment_[a-z_]+\b", text)}
    base = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    # prometheus_client appends _total to counters the monitor declares without it (drift windows, triggers)
    extra = {"sentiment_drift_windows_total", "sentiment_drift_triggers_total"}
    unknown = {m for m in base if m not in known and m not in extra and f"{m}_total" not in known}
    assert not unknown, f"metrics not in docs/metrics.md: {sorted(unknown)}"


# ---- Alertmanager --------------------------------------------------------------------------------------------

@pytest.fixture()
def am_config(tmp_path) -> Path:
    """The config with the templates path pointed at the repo's templates, so check-config parses them too."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["global"]["slack_api_url_file"].startswith("/etc/alertmanager/secrets/")
    assert "slack_api_url" not in config["global"]
    config["templates"] = [str(MONITORING / "alertmanager" / "*.tmpl")]
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_amtool_check_config(am_config):
    amtool = tool("amtool")
    for path in (ALERTMANAGER, am_config):
        done = run(amtool, "check-config", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
    assert "1 templates" in done.stdout


def test_amtool_check_config_rejects_a_broken_template(am_config, tmp_path):
    amtool = tool("amtool")
    broken = tmp_path / "broken.tmpl"
    broken.write_text('{{ define "x" }}{{ .Status }\n')
    config = yaml.safe_load(am_config.read_text())
    config["templates"] = [str(broken)]
    am_config.write_text(yaml.safe_dump(config))
    assert run(amtool, "check-config", str(am_config)).returncode != 0


ROUTES = [
    ({"alertname": "DataDrift", "severity": "warning", "action": "retrain", "feature": "input_tokens"},
     "retrain-webhook,slack-warnings"),
    ({"alertname": "HighErrorRate", "severity": "critical"}, "slack-critical"),
    ({"alertname": "ModelNotReady", "severity": "critical"}, "slack-critical"),
    ({"alertname": "HighLatency", "severity": "warning"}, "slack-warnings"),
    ({"alertname": "LowConfidence", "severity": "warning"}, "slack-warnings"),
    ({"alertname": "TrainingWorkflowFailed", "severity": "warning", "template": "sentiment-training"},
     "slack-warnings"),
    ({"alertname": "NoSuccessfulRetrain", "severity": "warning", "template": "sentiment-training"},
     "slack-warnings"),
    ({"alertname": "SomethingElse"}, "slack-warnings"),
]


@pytest.mark.parametrize(("labels", "receivers"), ROUTES, ids=[r[0]["alertname"] for r in ROUTES])
def test_amtool_routes(labels, receivers):
    amtool = tool("amtool")
    args = [f"{k}={v}" for k, v in labels.items()]
    done = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
               f"--verify.receivers={receivers}", *args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_drift_is_the_only_route_to_the_retraining_webhook_and_it_reaches_the_charts_namespace():
    config = yaml.safe_load(ALERTMANAGER.read_text())
    routes = config["route"]["routes"]
    to_webhook = [r for r in routes if r["receiver"] == "retrain-webhook"]
    assert [r["matchers"] for r in to_webhook] == [['action="retrain"']]
    assert to_webhook[0]["continue"] is True
    # One retrain per drift episode and day: a changed group (a second drifting feature, a flap) is re-sent after
    # group_interval, a still-firing one after repeat_interval; each send is a submission the Sensor queues.
    assert to_webhook[0]["group_interval"] == to_webhook[0]["repeat_interval"] == "24h"
    assert {name for name, rule in alerts().items() if rule["labels"].get("action") == "retrain"} == {"DataDrift"}
    (hook,) = next(r for r in config["receivers"] if r["name"] == "retrain-webhook")["webhook_configs"]
    assert hook["send_resolved"] is False
    host = re.match(r"http://([^:/]+)", hook["url"]).group(1)
    terraform_ns = re.search(r'variable "namespace".*?default\s*=\s*"([^"]+)"',
                             (REPO / "terraform" / "variables.tf").read_text(), re.DOTALL).group(1)
    assert host == f"sentiment-retrain-eventsource-svc.{terraform_ns}.svc"
    # The comment once claimed a rate limit nobody configured: the Sensor's rate limit must exist if it is cited.
    text = ALERTMANAGER.read_text()
    if "rate limit" in text:
        sensor = yaml.safe_load((REPO / "charts" / "sentimentops" / "files" / "workflows" /
                                 "sentiment-retrain-sensor.yaml").read_text())
        assert any(t.get("rateLimit") for t in sensor["spec"]["triggers"]), "the Sensor has no trigger rateLimit"


def test_route_test_can_fail():
    amtool = tool("amtool")
    done = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
               "--verify.receivers=slack-critical", "alertname=DataDrift", "severity=warning", "action=retrain")
    assert done.returncode != 0


def test_slack_templates_render():
    amtool = tool("amtool")
    text = ('{{ template "sentiment.slack.title" . }}|{{ template "sentiment.slack.color" . }}|'
            '{{ template "sentiment.slack.text" . }}')
    done = run(amtool, "template", "render", f"--template.glob={MONITORING / 'alertmanager'}/*.tmpl",
               f"--template.text={text}")
    assert done.returncode == 0, done.stderr
    title, color, _ = done.stdout.split("|", 2)
    assert title.strip() and color.strip() in {"good", "danger", "warning"}


def test_dashboards_are_valid_grafana_json():
    boards = sorted((MONITORING / "dashboards").glob("*.json"))
    assert {p.stem for p in boards} >= {"sentiment-service-health", "sentiment-model-performance"}
    for path in boards:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["targets"], panel["title"]
            assert all(t["expr"].strip() and t["refId"] for t in panel["targets"]), panel["title"]
