"""`sentimentops notify`, the training workflow's exit handler: the message from Argo's exit-handler variables (the
pure core), and the command against a real HTTP server on 127.0.0.1 standing in for Slack's incoming webhook
(answering 200, answering 500, not there at all), a usage error, and what the module imports (it runs in the
sentimentops-rollout image, which installs the core and the `rollout` extra only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sentimentops.steps import notify
from sentimentops.steps.core.client import free_port

CLI = str(Path(sys.executable).with_name("sentimentops"))
# What Argo's controller substitutes for {{workflow.failures}} when `train` failed after one retry, inside a DAG
# (operator.go marshals failedNodeStatus: displayName, message, templateName, phase, podName, finishedAt): the
# attempts, the retry node and every ancestor (the workflow's root DAG node, "child ... failed").
ARGO_FAILURES = json.dumps([
    {"displayName": "sentiment-training-x7k2p", "message": "child 'sentiment-training-x7k2p-1' failed",
     "templateName": "pipeline", "phase": "Failed", "podName": "sentiment-training-x7k2p",
     "finishedAt": "2026-11-27T03:40:00Z"},
    {"displayName": "train", "message": "Error (exit code 3)", "templateName": "train", "phase": "Failed",
     "podName": "sentiment-training-x7k2p-train-2", "finishedAt": "2026-11-27T03:39:59Z"},
    {"displayName": "train(0)", "message": "Error (exit code 3)", "templateName": "train", "phase": "Failed",
     "podName": "sentiment-training-x7k2p-train-1", "finishedAt": "2026-11-27T03:20:00Z"},
    {"displayName": "train(1)", "message": "Error (exit code 3)", "templateName": "train", "phase": "Failed",
     "podName": "sentiment-training-x7k2p-train-2", "finishedAt": "2026-11-27T03:39:59Z"},
])


# ---- the pure core ----------------------------------------------------------------------------------------------

def test_argos_failures_become_one_line_per_failed_task():
    failures, problem = notify.parse_failures(ARGO_FAILURES)
    assert problem is None
    assert failures == (notify.Failure("train", "train", "Failed", "Error (exit code 3)"),)


def test_argos_quoted_failures_as_the_runner_and_the_controller_pass_them():
    """The controller strconv.Quote's the list before substitution, so the argument is a JSON string holding it; the
    local runner's exit handler builds that same text (workflows/runner/exit_handler.py)."""
    from sentimentops.workflows.runner.exit_handler import FailedNode, failures_value

    failures, problem = notify.parse_failures(json.dumps(ARGO_FAILURES))
    assert problem is None and [f.task for f in failures] == ["train"]
    local = failures_value([FailedNode("rollout/analyse", "analyse", "Failed", "exit code 3: see analyse/log.txt",
                                       "2026-11-30T14:00:00+00:00")])
    assert notify.parse_failures(local) == ((notify.Failure("analyse", "analyse", "Failed",
                                                            "exit code 3: see analyse/log.txt"),), None)
    assert notify.parse_failures(failures_value([])) == ((), None)


@pytest.mark.parametrize("text", ["", "null", "  null\n", "[]", '"null"', '""'])
def test_no_failures(text):
    """Argo marshals a nil Go slice when nothing failed: the JSON `null` (quoted, as the controller passes it)."""
    assert notify.parse_failures(text) == ((), None)


@pytest.mark.parametrize("text, problem", [
    ("{{workflow.failures}}", "not JSON"),  # not substituted (run outside an exit handler)
    ('[{"displayName": "train"', "not JSON"),  # cut short
    ('{"displayName": "train"}', "expected a JSON list of objects, got dict"),
    ('["train"]', "expected a JSON list of objects, got list"),
])
def test_unreadable_failures_are_reported_not_raised(text, problem):
    failures, found = notify.parse_failures(text)
    assert failures == () and found.startswith(problem)


def test_the_message_says_outcome_reason_duration_failures_and_links_the_ui():
    failures, _ = notify.parse_failures(ARGO_FAILURES)
    text = notify.message(notify.Outcome(
        workflow="sentiment-training-x7k2p", namespace="sentimentops", status="Failed",
        reason="drift: input_tokens PSI 0.41 > 0.2", duration_s=2399.6, failures=failures,
        ui_url="https://argo.example.com/"))
    lines = text.splitlines()
    assert lines[0] == ":x: *sentimentops/sentiment-training-x7k2p* Failed in 40 min 0 s"
    assert lines[1] == "Reason: drift: input_tokens PSI 0.41 > 0.2"
    assert "• `train` Failed: Error (exit code 3)" in lines
    assert lines[-1] == ("<https://argo.example.com/workflows/sentimentops/sentiment-training-x7k2p|"
                         "Open in the Argo UI>")
    ok = notify.message(notify.Outcome(workflow="w", namespace="local", status="Succeeded", duration_s=61))
    assert ok == ":white_check_mark: *local/w* Succeeded in 1 min 1 s"  # no reason, no failures, no UI: nothing


def test_long_lists_and_messages_are_bounded():
    many = tuple(notify.Failure(f"t{i}", f"t{i}", "Error", "x" * 1000) for i in range(12))
    text = notify.message(notify.Outcome(workflow="w", namespace="n", status="Error", failures=many))
    assert f"• and {12 - notify.MAX_LISTED} more" in text
    assert max(len(line) for line in text.splitlines()) < notify.MAX_MESSAGE + 40


@pytest.mark.parametrize("text, seconds", [("2399.6", 2399.6), ("0", 0.0), ("", None), ("soon", None),
                                           ("nan", None), ("-3", None)])
def test_duration(text, seconds):
    assert notify.parse_duration(text) == seconds


def test_ui_link_only_with_a_ui_url():
    assert notify.workflow_link("", "ns", "w") == ""
    assert notify.workflow_link("http://localhost:2746", "ns", "w") == "http://localhost:2746/workflows/ns/w"


# ---- the command against a Slack stand-in -----------------------------------------------------------------------

class Slack:
    """An incoming-webhook stand-in: records each POST body and answers with the status it is given."""

    def __init__(self, status: int = 200):
        self.status, self.bodies = status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append((self.headers.get("Content-Type"),
                                     json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                answer = b"ok" if outer.status == 200 else b"internal_error"
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXXX"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def slack():
    stand_in = Slack()
    yield stand_in
    stand_in.close()


ARGS = ["--workflow", "sentiment-training-x7k2p", "--namespace", "sentimentops", "--status", "Failed",
        "--failures", ARGO_FAILURES, "--reason", "cron", "--duration", "75.2", "--ui-url", "https://argo.example.com"]


def run_cli(args: list[str], webhook: str | None, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENTOPS_")}
    env.update({"SENTIMENTOPS_HOME": str(home), "SENTIMENTOPS_LOG_FORMAT": "text"})
    if webhook is not None:
        env["SENTIMENTOPS_NOTIFY_SLACK_WEBHOOK_URL"] = webhook
    return subprocess.run([CLI, "notify", *args], check=False, env=env, capture_output=True, text=True, timeout=120)


def test_the_exit_handler_posts_one_message_to_slack(slack, tmp_path):
    done = run_cli(ARGS, slack.url, tmp_path)
    assert done.returncode == 0, done.stderr
    ((content_type, body),) = slack.bodies
    assert content_type == "application/json" and set(body) == {"text"}
    assert body["text"] == done.stdout.strip()  # the step's log shows exactly what Slack got
    assert "Failed in 1 min 15 s" in body["text"] and "Reason: cron" in body["text"]
    assert "<https://argo.example.com/workflows/sentimentops/sentiment-training-x7k2p|" in body["text"]
    assert "posted to Slack (200)" in done.stderr


def test_slack_answering_500_is_logged_and_the_handler_still_succeeds(slack, tmp_path):
    slack.status = 500
    done = run_cli(ARGS, slack.url, tmp_path)
    assert done.returncode == 0
    assert len(slack.bodies) == 1 and "Slack answered 500 (internal_error)" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_slack_is_logged_and_the_handler_still_succeeds(tmp_path):
    done = run_cli([*ARGS[:-2], "--ui-url", ""], f"http://127.0.0.1:{free_port()}/hook", tmp_path)
    assert done.returncode == 0
    assert "Slack not reached" in done.stderr and "Traceback" not in done.stderr
    assert "Open in the Argo UI" not in done.stdout


def test_without_a_webhook_the_message_is_logged_only(tmp_path):
    done = run_cli(["--workflow", "local-run", "--namespace", "local", "--status", "Succeeded", "--failures", "null"],
                   None, tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == ":white_check_mark: *local/local-run* Succeeded"
    assert "no Slack webhook configured" in done.stderr


def test_bad_failures_json_sends_the_message_without_the_list(slack, tmp_path):
    done = run_cli([*ARGS[:5], "Error", "--failures", "{{workflow.failures}}"], slack.url, tmp_path)
    assert done.returncode == 0
    assert "--failures is not JSON" in done.stderr
    assert "not readable from Argo's failures list" in slack.bodies[0][1]["text"]


def test_a_usage_error_exits_2(tmp_path):
    done = run_cli(["--workflow", "w"], None, tmp_path)  # no --status
    assert done.returncode == 2 and "--status" in done.stderr


def test_it_is_registered_in_the_cli():
    from sentimentops.steps import cli

    assert cli.STAGES["notify"] == "sentimentops.steps.notify"
    assert notify.NotifySettings.section == "notify"


def test_it_imports_nothing_outside_the_rollout_image():
    """images/rollout.Dockerfile installs the project (core dependencies) with the `rollout` extra: every
    distribution notify loads must be one of those or what they require."""
    import re
    from importlib import metadata

    from packaging.requirements import Requirement

    def modules(code: str) -> set[str]:
        probe = f"import sys\n{code}\nprint('\\n'.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
        done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "SENTIMENTOPS_HOME": "/tmp/notify-import-probe"})
        assert done.returncode == 0, done.stderr
        return set(done.stdout.split())

    # What the interpreter loads before any import (site's .pth hooks) is not notify's doing.
    loaded = modules("import sentimentops.steps.notify as n\nn.main(['--workflow', 'w', '--status', 'Succeeded'])")
    loaded -= modules("")

    def closure(names: list[str]) -> set[str]:
        seen, todo = set(), list(names)
        while todo:
            name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
            if name in seen:
                continue
            seen.add(name)
            try:
                requires = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                continue
            todo += [r.name for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": ""})]
        return seen

    project = [Requirement(r) for r in metadata.requires("sentimentops")]
    base = [r.name for r in project if r.marker is None]
    rollout = [r.name for r in project if r.marker is not None and r.marker.evaluate({"extra": "rollout"})
               and not r.marker.evaluate({"extra": ""})]
    allowed = closure(base + rollout) | {"sentimentops"}
    owners = metadata.packages_distributions()
    outside = {m: owners[m] for m in loaded if m in owners
               and not {re.sub(r"[-_.]+", "-", d).lower() for d in owners[m]} & allowed}
    assert not outside, outside
