"""The prediction-record sink (docs/metrics.md): one JSON object per prediction appended to a JSON-lines file,
rotated by size, read by the drift monitor. No raw text unless log_text is set."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from sentimentops.steps.core.contract import label_of
from sentimentops.steps.core.psi import RECORD_DECIMALS


class PredictionLog:
    def __init__(self, path: Path, *, max_bytes: int = 50 * 2**20, backups: int = 3, log_text: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.backups, self.log_text = max_bytes, backups, log_text
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            self._file.write(lines)
            self._file.flush()
            if self._file.tell() >= self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        """PATH -> PATH.1 -> ... -> PATH.<backups> (the oldest dropped), then a fresh PATH."""
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def record(model_version: str, input_tokens: int, truncated: bool, probability: float, content: float,
           text: str | None = None, ts: float | None = None) -> dict:
    p = float(probability)
    out = {"ts": round(ts if ts is not None else time.time(), 3), "model_version": model_version,
           "input_tokens": int(input_tokens), "truncated": bool(truncated),
           "confidence": round(max(p, 1 - p), RECORD_DECIMALS), "probability": round(p, RECORD_DECIMALS),
           "label": label_of(p), "content": round(float(content), RECORD_DECIMALS)}
    if text is not None:
        out["text"] = text
    return out
