"""steps/core/logs.py: JSON lines with a severity off a terminal (Cloud Logging), plain lines on one, progress as
periodic log lines in pods, and stdout reserved for a command's result (issue 11: ~60 print() calls, tqdm's `\\r`
redraws joined into one unreadable line in a pod's log)."""
from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path

import pytest

from sentimentops.steps.core import logs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def captured(monkeypatch):
    """The root handler re-installed on a StringIO (not a terminal); restored afterwards."""
    monkeypatch.delenv("SENTIMENTOPS_LOG_FORMAT", raising=False)
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    logs.setup(stream=stream, force=True)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in before[0]:
        root.addHandler(handler)
    root.setLevel(before[1])


def test_off_a_terminal_every_record_is_one_json_object_with_severity(captured):
    log = logging.getLogger("sentimentops.test")
    log.info("trained %d steps", 12, extra={"step": 12})
    log.warning("slow")
    try:
        raise ValueError("bad row")
    except ValueError:
        log.exception("failed")
    entries = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [e["severity"] for e in entries] == ["INFO", "WARNING", "ERROR"]
    assert entries[0]["message"] == "trained 12 steps" and entries[0]["step"] == 12
    assert entries[0]["logger"] == "sentimentops.test" and entries[0]["time"].endswith("+00:00")
    assert "ValueError: bad row" in entries[2]["exception"]


def test_text_format_when_asked(monkeypatch):
    monkeypatch.setenv("SENTIMENTOPS_LOG_FORMAT", "text")
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        logs.setup(stream=stream, force=True)
        logging.getLogger("sentimentops.test").info("hello")
        line = stream.getvalue().strip()
        assert line.endswith("INFO sentimentops.test: hello") and not line.startswith("{")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)


def test_progress_off_a_terminal_logs_lines_not_bars(captured):
    log = logging.getLogger("sentimentops.test")
    with logs.Progress(total=4, desc="train", unit="step", log=log, every_s=0.0, stream=io.StringIO()) as bar:
        for _ in range(4):
            bar.update(1, loss=0.5)
    out = captured.getvalue()
    assert "\r" not in out
    messages = [json.loads(line)["message"] for line in out.splitlines()]
    assert len(messages) == 4 and messages[-1].startswith("train: 4/4 step (100%)") and "loss=0.5" in messages[-1]


def test_emit_writes_the_result_to_stdout_only(capsys, captured):
    logs.emit('{"label": "positive"}')
    out, err = capsys.readouterr()
    assert out == '{"label": "positive"}\n' and err == "" and captured.getvalue() == ""


def _prints(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]


def test_no_module_prints():
    """Diagnostics are log records; a command's result goes through logs.emit()."""
    found = []
    for folder in ("steps", "workflows"):
        for path in (REPO / folder).rglob("*.py"):
            if "schemas" in path.parts:  # workflows/schemas/refresh.py: a maintainer's script run by `make schemas`
                continue
            found += [f"{path.relative_to(REPO)}:{line}" for line in _prints(path)]
    assert not found, "print() outside logs.emit():\n" + "\n".join(found)
