"""The predictor's prediction records as the drift monitor reads them (docs/metrics.md): JSON lines -> feature
columns (core.psi.Features), a whole file or window at once, and a `tail -F` follower. Shared by `drift watch` and
`drift report` (its own module, so neither command imports the other)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from sentimentops.steps.core.psi import Features, features_from_predictions

_loads: Callable[[Any], Any]
try:  # 3-5x faster record parsing; the pure-stdlib path gives the same values
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads


def parse_records(lines: Sequence[bytes | str]) -> tuple[Features, list[str]]:
    """JSON lines -> feature columns and the model versions; malformed or incomplete lines are skipped."""
    try:  # fast path: the whole window as one JSON array (one parser call, columns by comprehension)
        recs = _loads(b"[" + b",".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"]")
        columns = ([float(r["input_tokens"]) for r in recs], [float(r["probability"]) for r in recs],
                   [float(r.get("content", 0.0)) for r in recs])
        return features_from_predictions(*columns), [str(r.get("model_version", "")) for r in recs]
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # a broken line somewhere: parse line by line and skip it
    tokens, probs, content, versions = [], [], [], []
    for line in lines:
        try:
            rec = _loads(line)
            row = (float(rec["input_tokens"]), float(rec["probability"]), float(rec.get("content", 0.0)))
        except (ValueError, KeyError, TypeError):
            continue
        tokens.append(row[0])
        probs.append(row[1])
        content.append(row[2])
        versions.append(str(rec.get("model_version", "")))
    return features_from_predictions(tokens, probs, content), versions


def read_records(paths: list[Path], last: int | None = None) -> tuple[Features, list[str]]:
    lines: list[bytes] = []
    for path in paths:
        with open(path, "rb") as fh:
            lines.extend(fh.read().splitlines())
    return parse_records(lines[-last:] if last else lines)


class RecordTail:
    """Follows a JSON-lines file the way `tail -F` does: complete lines only, and after a rotation (the path
    now names another file, or the file shrank) the rest of the old file and then the new one from its start."""

    def __init__(self, path: Path, from_start: bool = True):
        self.path = Path(path)
        self._fh: IO[bytes] | None = None
        self._inode: int | None = None
        self._partial = b""
        self._from_start = from_start

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (held open across polls, closed on rotation)
        except FileNotFoundError:
            return False
        if not self._from_start:
            fh.seek(0, os.SEEK_END)
        self._from_start = True  # a file that appears later (rotation) is read from its start
        self._fh, self._inode, self._partial = fh, os.fstat(fh.fileno()).st_ino, b""
        return True

    def read(self) -> list[bytes]:
        if self._fh is None and not self._open():
            return []
        assert self._fh is not None
        lines = self._drain(self._fh)
        try:
            stat = os.stat(self.path)
            rotated = stat.st_ino != self._inode or stat.st_size < self._fh.tell()
        except FileNotFoundError:
            rotated = False  # mid-rotation: keep the old handle until the new file appears
        if rotated:
            self._fh.close()
            self._fh = None
            if self._open():
                assert self._fh is not None
                lines += self._drain(self._fh)
        return lines

    def _drain(self, fh: IO[bytes]) -> list[bytes]:
        data = self._partial + fh.read()
        *lines, self._partial = data.split(b"\n")
        return [line for line in lines if line.strip()]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
