"""`sentimentops notify`: the training workflow's exit handler posts its outcome to Slack.

Argo runs the `notify` template after the DAG (`onExit`), whatever the outcome, with the exit handler's variables
(docs/variables.md, "Exit Handler"): `{{workflow.status}}` is Succeeded, Failed or Error; `{{workflow.failures}}`
is a JSON list of the nodes that failed or errored, each with displayName, message, templateName, phase, podName
and finishedAt, and the JSON `null` when none did (the controller marshals a nil Go slice); `{{workflow.duration}}`
is the workflow's duration in seconds. The local runner sets the same variables (namespace `local`).

  sentimentops notify --workflow NAME --namespace NS --status STATUS [--failures JSON] [--reason TEXT]
                      [--duration SECONDS] [--ui-url URL]

One message (outcome, reason, duration, the failed tasks, and `<ui-url>/workflows/<namespace>/<name>` when a UI
URL is given) goes to the Slack incoming webhook in `notify.slack_webhook_url` (environment
SENTIMENTOPS_NOTIFY_SLACK_WEBHOOK_URL; the chart fills it from a Secret) as `{"text": ...}`, or to the log when
none is set. A notification never fails the workflow: a Slack error or an unreachable Slack is logged and the
command still exits 0; a malformed failures list is logged and the message goes without it. Bad flags exit 2.

It runs in the sentimentops-rollout image: it imports the standard library and the core only.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.errors import stage_main
from sentimentops.steps.core.logs import emit, get_logger

log = get_logger("sentimentops.notify")

MAX_LISTED = 8  # failed tasks named in the message; the rest are counted
MAX_MESSAGE = 300  # characters of one failure's message (a pod's message can be a whole log line)
# Argo marks every ancestor of a failed task failed too, with this message; the tasks themselves say more.
PARENT_MESSAGE = re.compile(r"^child '.*' (failed|errored)$")
RETRY_SUFFIX = re.compile(r"\(\d+\)$")  # a retried task's attempts are named `train(0)`, `train(1)`, ...


class NotifySettings(CommonSettings):
    section: ClassVar[str] = "notify"
    slack_webhook_url: str = Field("", description="Slack incoming webhook URL; empty: the message is only logged.")
    timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for Slack before giving up (logged, exit 0).")


@dataclass(frozen=True)
class Failure:
    task: str
    template: str
    phase: str
    message: str


@dataclass(frozen=True)
class Outcome:
    workflow: str
    namespace: str
    status: str
    reason: str = ""
    duration_s: float | None = None
    failures: tuple[Failure, ...] = ()
    failures_unreadable: bool = False  # the failures argument was given but was not Argo's JSON list
    ui_url: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "Succeeded"


# ---- the pure core ----------------------------------------------------------------------------------------------

def parse_failures(text: str) -> tuple[tuple[Failure, ...], str | None]:
    """Argo's failures JSON -> the failed tasks (ancestors and repeated retry attempts folded away), and a problem
    description when the text is not a JSON list of objects (the caller logs it; the message goes without)."""
    text = (text or "").strip()
    if not text or text == "null":
        return (), None
    try:
        items = json.loads(text)
        # Argo hands the list over strconv.Quote'd (operator.go: "so that the escaped quotes are not removed during
        # parameter substitution"): the argument is a JSON string holding the JSON list, or holding `null`.
        if isinstance(items, str):
            items = json.loads(items) if items.strip() else None
    except ValueError as err:
        return (), f"not JSON ({err})"
    if items is None:
        return (), None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return (), f"expected a JSON list of objects, got {type(items).__name__}"
    found = [Failure(task=str(i.get("displayName") or i.get("podName") or "?"), template=str(i.get("templateName")
                                                                                            or ""),
                     phase=str(i.get("phase") or ""), message=" ".join(str(i.get("message") or "").split()))
             for i in items]
    tasks = [f for f in found if not PARENT_MESSAGE.match(f.message)] or found
    unique: dict[tuple[str, str], Failure] = {}
    for f in tasks:  # one line per task: attempts of a retried task collapse into one, keeping the last message
        unique[(RETRY_SUFFIX.sub("", f.task), f.message)] = Failure(RETRY_SUFFIX.sub("", f.task), f.template,
                                                                    f.phase, f.message)
    return tuple(unique.values()), None


def parse_duration(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def human_duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def workflow_link(ui_url: str, namespace: str, workflow: str) -> str:
    """The workflow's page in the Argo UI (its route: /workflows/<namespace>/<name>); empty without a UI URL."""
    return f"{ui_url.rstrip('/')}/workflows/{namespace}/{workflow}" if ui_url.strip() else ""


def message(outcome: Outcome) -> str:
    """The Slack message (mrkdwn): outcome first, then why it ran, how long it took, what failed, the link."""
    mark = ":white_check_mark:" if outcome.succeeded else ":x:"
    where = f"{outcome.namespace}/{outcome.workflow}" if outcome.namespace else outcome.workflow
    lines = [f"{mark} *{where}* {outcome.status or 'finished'}"
             + (f" in {human_duration(outcome.duration_s)}" if outcome.duration_s is not None else "")]
    if outcome.reason:
        lines.append(f"Reason: {outcome.reason}")
    if outcome.failures:
        lines.append("Failed:")
        for f in outcome.failures[:MAX_LISTED]:
            detail = f.message[:MAX_MESSAGE] + ("..." if len(f.message) > MAX_MESSAGE else "")
            template = f" ({f.template})" if f.template and f.template != f.task else ""
            lines.append(f"• `{f.task}`{template} {f.phase}" + (f": {detail}" if detail else ""))
        if len(outcome.failures) > MAX_LISTED:
            lines.append(f"• and {len(outcome.failures) - MAX_LISTED} more")
    elif outcome.failures_unreadable:
        lines.append("Failed tasks: not readable from Argo's failures list (see the exit handler's log).")
    link = workflow_link(outcome.ui_url, outcome.namespace, outcome.workflow)
    if link:
        lines.append(f"<{link}|Open in the Argo UI>")
    return "\n".join(lines)


def slack_payload(text: str) -> dict:
    """An incoming webhook's body: `text` (mrkdwn) is enough for one message."""
    return {"text": text}


# ---- the thin edge: Slack over HTTP, the command line ---------------------------------------------------------

def post(url: str, payload: dict, timeout_s: float) -> int:
    """POSTs the JSON payload; returns the HTTP status (2xx), raises OSError (urllib's HTTPError/URLError) else."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        return answer.status


def deliver(text: str, settings: NotifySettings) -> bool:
    """Slack when configured, else the log; True when Slack took it. Never raises for Slack's failures."""
    if not settings.slack_webhook_url:
        log.info("notify: no Slack webhook configured (SENTIMENTOPS_NOTIFY_SLACK_WEBHOOK_URL): message logged only")
        return False
    try:
        status = post(settings.slack_webhook_url, slack_payload(text), settings.timeout_s)
    except urllib.error.HTTPError as err:
        body = err.read()[:200].decode(errors="replace")
        log.error("notify: Slack answered %s (%s); the workflow's outcome stands", err.code, body)
        return False
    except (OSError, ValueError) as err:  # unreachable, timed out, a malformed URL
        log.error("notify: Slack not reached: %s; the workflow's outcome stands", err)
        return False
    log.info("notify: posted to Slack (%s)", status)
    return True


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflow", required=True, help="the workflow's name ({{workflow.name}})")
    parser.add_argument("--namespace", default="", help="its namespace ({{workflow.namespace}})")
    parser.add_argument("--status", required=True, help="Succeeded | Failed | Error ({{workflow.status}})")
    parser.add_argument("--failures", default="", help="Argo's failed nodes as JSON ({{workflow.failures}})")
    parser.add_argument("--reason", default="", help="why the workflow ran ({{workflow.parameters.reason}})")
    parser.add_argument("--duration", default="", help="seconds it ran ({{workflow.duration}})")
    parser.add_argument("--ui-url", default="", help="the Argo UI's base URL; empty: no link")


@stage_main("notify")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(NotifySettings, argv, prog="sentimentops notify", description=__doc__,
                                    add_arguments=_arguments)
    failures, problem = parse_failures(args.failures)
    if problem:
        log.warning("notify: --failures is %s: the message goes without the failed tasks; it was: %.300s",
                    problem, args.failures)
    duration = parse_duration(args.duration)
    if args.duration and duration is None:
        log.warning("notify: --duration %r is not a number of seconds: left out", args.duration)
    outcome = Outcome(workflow=args.workflow, namespace=args.namespace, status=args.status.strip(),
                      reason=" ".join(args.reason.split()), duration_s=duration, failures=failures,
                      failures_unreadable=problem is not None, ui_url=args.ui_url)
    text = message(outcome)
    emit(text)  # the step's log shows the message whatever Slack does
    deliver(text, settings)
    return 0
