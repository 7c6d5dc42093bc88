"""Logs and progress for every stage, server and command: stdlib `logging`, one setup, two shapes.

- On a terminal: plain lines (`12:03:04 INFO train: epoch 1/2 ...`) and tqdm progress bars.
- Anywhere else (an Argo pod, a file, a pipe): one JSON object per line with `severity`, `message`, `time` and
  `logger`, the fields Cloud Logging reads from a container's stdout/stderr (structured logging), and progress as a
  periodic log line instead of a bar (a bar's `\\r` redraws become one unreadable line in a pod's log).
`SENTIMENTOPS_LOG_FORMAT=json|text` overrides the choice; `SENTIMENTOPS_LOG_LEVEL` sets the level (INFO).

stdout is kept for a command's result (a JSON document, the answer a user asked for): `emit()` writes it. Logs go
to stderr. tests/unit/test_logs.py pins both shapes, and that no module under steps/ or workflows/ calls print().
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, Self, TypeVar

T = TypeVar("T")
_HANDLER_FLAG = "_sentimentops_handler"
# Record attributes that are logging's own; anything else passed through `extra=` is a structured field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def json_wanted(stream: IO[str] | None = None) -> bool:
    """JSON lines unless the stream is a terminal (or SENTIMENTOPS_LOG_FORMAT says otherwise)."""
    choice = os.environ.get("SENTIMENTOPS_LOG_FORMAT", "auto").lower()
    if choice in {"json", "text"}:
        return choice == "json"
    return not _is_terminal(stream or sys.stderr)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: severity, message, time (RFC 3339, UTC), logger, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Handler(logging.StreamHandler):
    """Writes to the given stream, or to whatever `sys.stderr` is at the time of each record (pytest's capture and
    a redirected stderr then see the lines; a handler bound once to the first stderr would not)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def setup(level: str | int | None = None, *, stream: IO[str] | None = None, force: bool = False) -> None:
    """Installs the one handler on the root logger (idempotent; `force` replaces it, e.g. for another stream)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]
    if ours and not force:
        return
    for handler in ours:
        root.removeHandler(handler)
    handler = _Handler(stream)
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(JsonFormatter() if json_wanted(stream) else logging.Formatter(TEXT_FORMAT, "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("SENTIMENTOPS_LOG_LEVEL", "INFO").upper())
    # Libraries that log every HTTP request or file at INFO would drown the stage's own lines.
    for noisy in ("httpx", "urllib3", "alembic", "botocore", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with the handler installed, so a module-level logger works from any entry point."""
    setup()
    return logging.getLogger(name)


def emit(text: str = "", *, stream: IO[str] | None = None) -> None:
    """Writes a command's result (not a log record) to stdout: the one place this project prints."""
    out = stream or sys.stdout
    out.write(text + "\n")
    out.flush()


class Progress:
    """A progress bar on a terminal, a log line every `every_s` seconds elsewhere (pods, files, CI).

        with Progress(total=steps, desc="train", unit="step", log=log) as bar:
            for ...: bar.update(1, loss=0.31)
    """

    def __init__(self, total: int | None, *, desc: str, unit: str = "it", initial: int = 0,
                 log: logging.Logger | None = None, every_s: float = 30.0, enabled: bool = True,
                 stream: IO[str] | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.log = log or logging.getLogger("sentimentops.progress")
        self.every_s, self.enabled = every_s, enabled
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._start_n = initial
        stream = stream or sys.stderr
        self._bar = None
        if enabled and _is_terminal(stream) and not json_wanted(stream):
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is a core dependency
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(self.postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or (self.total is not None and self.n >= self.total):
            self._last = now
            self.log.info("%s", self.line(now), extra={"progress": self.n, "total": self.total})

    def line(self, now: float | None = None) -> str:
        """`train: 120/500 step (24%), 3.20 step/s, eta 1m59s, loss=0.31`."""
        elapsed = max((now or time.monotonic()) - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total} {self.unit}" if self.total else f" {self.unit}")]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0:
            left = int((self.total - self.n) / rate)
            parts.append(f"eta {left // 60}m{left % 60:02d}s")
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], *, total: int | None = None, desc: str, unit: str = "it",
             log: logging.Logger | None = None, every_s: float = 30.0) -> Iterator[T]:
    """Iterates `items` while reporting progress the way `Progress` does."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc=desc, unit=unit, log=log, every_s=every_s) as bar:
        for item in items:
            yield item
            bar.update(1)
