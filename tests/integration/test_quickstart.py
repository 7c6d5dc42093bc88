"""`sentimentops quickstart`, what `make run` runs, end to end on a smaller sample: the offline fallbacks (the hub
is unreachable under HF_HUB_OFFLINE: local IMDB data, the offline encoder), the DAG through the local runner, then
the predictor on 127.0.0.1 answering the demo reviews, each line with its label, probability and model version,
and the server stopped. A second run reuses every step and goes straight to serving.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import run

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("sentimentops"))
PREDICTION = re.compile(r"^\s+(positive|negative)\s+p\(positive\)=(0\.\d{3}|1\.000)\s+sentiment version (\d+)\s+\| ")
TASKS = ("ingest", "validate", "version", "train", "evaluate", "register")


def quickstart(home: Path) -> subprocess.CompletedProcess:
    argv = [CLI, "quickstart", "--port", str(free_port()), "-p", "sample-size=400", "-p", "test-size=100",
            "-p", "max-length=64"]
    env = {**os.environ, "SENTIMENTOPS_HOME": str(home)}
    return run(argv, timeout=900, env=env)


def test_quickstart_ends_with_served_predictions_and_a_rerun_reuses_every_step(tmp_path, imdb_dir):
    first = quickstart(tmp_path / "home")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    lines = first.stdout.splitlines()
    predictions = [m for m in map(PREDICTION.match, lines) if m]
    assert len(predictions) == 4, out[-4000:]
    assert {m.group(3) for m in predictions} == {"1"}  # the first registered version answers
    assert lines[-1] == "quickstart: server stopped"
    # issue 14, item 6: what the served version measured, and its card as a file one can open
    (summary,) = [line for line in lines if re.match(r"quickstart: sentiment version 1: test accuracy 0\.\d{4} ", line)]
    assert "TF-IDF baseline 0." in summary
    (card_line,) = [line for line in lines if line.startswith("quickstart: model card: ")]
    card = Path(card_line.split(": ", 2)[2].split(" (in MLflow")[0])
    assert card.is_file() and card.read_text().startswith("---\n") and "runs:/" in card_line
    assert any(line.startswith("quickstart: serving models:/sentiment@") for line in lines)

    again = quickstart(tmp_path / "home")
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    reused = {task for task in TASKS if re.search(rf"\[runner\] {task}\s+Reused", again.stdout)}
    assert reused == set(TASKS), again.stdout[-3000:]
    assert [m.group(0) for m in map(PREDICTION.match, again.stdout.splitlines()) if m] == \
        [m.group(0) for m in predictions]  # the same model, the same answers
