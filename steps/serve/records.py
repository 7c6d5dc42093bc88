"""The prediction-record sink (docs/metrics.md): one JSON object per prediction appended to a JSON-lines file,
rotated by size, read by the drift monitor. No raw text unless log_text is set.

Beside the records the predictor publishes the drift reference of the model it serves (`drift_reference.json`, the
model folder's `drift_reference` artifact), so the drift monitor needs nothing but this folder: in the cluster a
sidecar sharing it reads `<dir>/records.jsonl` and `<dir>/drift_reference.json`, and never KServe's own volumes.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from sentimentops.steps.core.contract import DRIFT_REFERENCE_FILE, label_of
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.psi import RECORD_DECIMALS

log = get_logger("sentimentops.serve")


def reference_path(records: Path) -> Path:
    """Where the drift reference is published: next to the prediction records, as drift_reference.json."""
    return Path(records).parent / DRIFT_REFERENCE_FILE


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

    def publish_reference(self, reference: Path | None) -> Path | None:
        """Copies the served model's drift reference next to the records, atomically (a temporary file in the
        same folder, then os.replace: a reader sees the old file or the new one, never half of one). Called on
        every model load. A model without a reference removes a stale one an earlier model left, so the monitor
        waits instead of judging this model against another's reference."""
        target = reference_path(self.path)
        if reference is None:
            target.unlink(missing_ok=True)
            log.warning("the model has no drift reference: %s not written (the drift monitor waits for it)", target)
            return None
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(reference, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("drift reference published: %s", target)
        return target


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
