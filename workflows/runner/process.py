"""Run one task's process: stream its output prefixed with the task name, tee it to a log, keep time.

Output is read in raw chunks, not lines, and the prefix is re-inserted after every `\\n` and `\\r`: tqdm redraws
its bar with `\\r` and no newline, so a line-buffered reader would hide training progress until the epoch ends.
"""

from __future__ import annotations

import codecs
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sentimentops.steps.core.logs import emit

# With no output for this long, print a heartbeat so a quiet step (a download, a DVC push) still shows life.
HEARTBEAT_S = 30.0
# A step asked to stop gets this long to exit before it is killed.
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class ProcessResult:
    exit_code: int
    seconds: float


def resolve_executable(name: str) -> str:
    """`sentimentops` from the running interpreter's bin dir first (the venv that runs the runner), then PATH."""
    if os.sep in name:
        return name
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"command {name!r} is neither next to {sys.executable} nor on PATH")
    return found


class _Prefixer:
    """Inserts `[task 12s] ` at the start of every line or carriage-return redraw."""

    def __init__(self, task: str, started: float, out: TextIO) -> None:
        self.task, self.started, self.out = task, started, out
        self.at_line_start = True

    def write(self, text: str) -> None:
        pieces: list[str] = []
        for ch in text:
            if self.at_line_start and ch not in "\r\n":
                pieces.append(f"[{self.task} {time.monotonic() - self.started:.0f}s] ")
                self.at_line_start = False
            pieces.append(ch)
            if ch in "\r\n":
                self.at_line_start = True
        self.out.write("".join(pieces))
        self.out.flush()

    def finish(self) -> None:
        if not self.at_line_start:
            self.out.write("\n")
            self.out.flush()


def run_streaming(
    task: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, out: TextIO, cwd: Path | None = None
) -> ProcessResult:
    """Run argv to completion; stdout and stderr are merged (their order matters for reading a failure)."""
    started = time.monotonic()
    prefixer = _Prefixer(task, started, out)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [resolve_executable(argv[0]), *argv[1:]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), cwd=cwd,
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        last_output = started
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                while True:
                    if not sel.select(timeout=1.0):
                        now = time.monotonic()
                        if now - last_output >= HEARTBEAT_S:
                            prefixer.finish()
                            emit(f"[runner] {task}: Running {now - started:.0f}s", stream=out)
                            prefixer.at_line_start, last_output = True, now
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    log.write(chunk)
                    log.flush()
                    prefixer.write(decoder.decode(chunk))
                    last_output = time.monotonic()
            prefixer.write(decoder.decode(b"", final=True))
            prefixer.finish()
            code = proc.wait()
        except BaseException:
            # Ctrl-C, SIGTERM (workflows/cli.py turns it into SystemExit) or an error in the runner: never leave an
            # orphaned training process holding the GPU/CPU. SIGTERM first, so a step can stop cleanly.
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        finally:
            proc.stdout.close()
    return ProcessResult(exit_code=code, seconds=time.monotonic() - started)
