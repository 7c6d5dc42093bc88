"""`drift webhook` stopped while its retrain runs: nothing of the retrain outlives it.

Incident (issue 10): a failing drift-loop test ended the webhook, but the retrain it had started (the local runner
and its train step) kept running into later tests, loading the machine. The webhook now runs each retrain in its
own process group and stops that group when it receives SIGTERM. The retrain here is a one-task rendered template
whose step writes its pid and sleeps: the real webhook, the real runner, a real grandchild.
"""
from __future__ import annotations

import signal
import sys
import urllib.request
from pathlib import Path

import yaml

from sentimentops.steps.core.client import free_port, post_json
from sentimentops.steps.core.processes import ProcessGroups, alive, wait_for

SLEEPER = r"""
import os, pathlib, sys, time
pathlib.Path(os.environ['PID_FILE']).write_text(str(os.getpid()))
time.sleep(300)  # bounded: the test stops it long before
"""


def template(tmp_path: Path) -> Path:
    spec = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "sleeper"},
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "reason", "value": "manual", "description": "why"}]},
            "templates": [
                {"name": "sleep", "container": {"image": "python:3.11", "command": [sys.executable, "-c", SLEEPER]},
                 "retryStrategy": {"limit": "0"}},
                {"name": "main", "dag": {"tasks": [{"name": "train", "template": "sleep"}]}},
            ],
        },
    }
    path = tmp_path / "sleeper.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200
    except OSError:
        return False


def test_sigterm_stops_the_running_retrain_and_its_step(tmp_path):
    port, pid_file = free_port(), tmp_path / "step.pid"
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "sentimentops.steps.cli", "drift", "webhook", "--port", str(port), "--run-root",
            str(tmp_path / "runs"), "--template", str(template(tmp_path)), "--env", f"PID_FILE={pid_file}",
            "--max-seconds", "300"]
    with ProcessGroups() as children:
        hook = children.start(argv, log=tmp_path / "webhook.log")
        wait_for(lambda: healthy(url), 60, "the webhook", [hook])
        started = post_json(f"{url}/retrain", {"reason": "drift: test"})
        assert started["status"] == "started"
        step_pid = int(wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 120, "the step", [hook]))
        assert alive(started["pid"]) and alive(step_pid)

        hook.send_signal(signal.SIGTERM)  # the webhook alone, as `kill PID` or a pod's stop would
        assert hook.wait(timeout=60) == 0
        # stop() returned only once the whole retrain group was gone: runner and step
        assert not alive(started["pid"]), "the retrain's runner outlived the webhook"
        assert not alive(step_pid), "the retrain's step outlived the webhook"
    output = (tmp_path / "webhook.log").read_text()
    assert "stopping the running retrain" in output, output
