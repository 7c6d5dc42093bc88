"""Production data on the predictor: sampled capture of requests with their predictions, and feedback labels
(docs/serving.md, Capture and feedback; the store and its columns: steps/core/production.py).

The request path never touches storage: it appends rows to a bounded in-memory `PartBuffer` under a lock and
returns. A background thread (`Flusher`) writes a buffer as one part when it holds `flush_rows` rows or its oldest
row has waited `flush_s` seconds, and once more at shutdown. A failed write keeps the rows and retries after
`flush_s` (nothing is lost while the buffer's bound holds); when the buffer is full, new captures are dropped and
counted, never a failed request. Feedback is a label somebody gave on purpose, so a full feedback buffer refuses
the label with 503 + Retry-After instead of dropping it (`PartBuffer.offer`). What no buffer survives: labels
answered 200 but still buffered when the process dies (SIGKILL, or storage still down at the shutdown flush, which
logs how many were lost); feedback_flush_s (5 s) bounds that window.

Feedback by id needs the capture: `RecentIndex` keeps the text, predicted class and model version of the most
recent captured instances, per replica and in memory only. An id outside it is refused (404), or, with
`defer_unknown_ids` (several replicas: another one may have captured it), stored as a deferred label without text
that ingest joins to its capture by id (production.resolve_deferred).
"""
from __future__ import annotations

import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sentimentops.steps.core.contract import LABELS, label_of
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.production import (
    CAPTURES,
    FEEDBACK,
    Store,
    capture_frame,
    feedback_frame,
    instance_id,
)
from sentimentops.steps.core.psi import RECORD_DECIMALS

log = get_logger("sentimentops.serve.capture")

Row = dict[str, Any]


@dataclass(frozen=True)
class CaptureSettings:
    """The predictor's production-data settings (ServeSettings.capture_* / feedback_*, docs/serving.md)."""

    rate: float = 0.0               # share of requests captured: 0 off, 1 all
    buffer: int = 10_000            # captured rows held in memory at most; more are dropped (counted)
    flush_rows: int = 500           # a part is written once this many rows wait ...
    flush_s: float = 30.0           # ... or the oldest has waited this long; also the retry interval after a failure
    index: int = 20_000             # recent captured instances that feedback by id can name (per replica)
    seed: int | None = None         # the sampler's seed (tests); None: random
    feedback_buffer: int = 1_000    # labels waiting for their write; more: 503 + Retry-After
    feedback_flush_rows: int = 50
    feedback_flush_s: float = 5.0
    feedback_memo: int = 100_000    # ids whose label this replica accepted (idempotence: duplicate / 409)
    defer_unknown_ids: bool = False  # feedback for an id not in `index`: stored deferred (202), not refused (404)


class PartBuffer:
    """A bounded list of rows written to storage in batches by `flush` (one writer at a time).

    `write(rows)` stores one part and raises on failure; `clock` is injectable (tests). The hooks report to the
    metrics: `on_write("ok" | "error")`, `on_drop(reason, count)`, `on_size(rows held)`."""

    def __init__(self, name: str, write: Callable[[list[Row]], Any], *, max_rows: int, flush_rows: int,
                 flush_s: float, clock: Callable[[], float] = time.monotonic,
                 on_write: Callable[[str], None] | None = None,
                 on_drop: Callable[[str, int], None] | None = None,
                 on_size: Callable[[int], None] | None = None):
        if max_rows < 1 or flush_rows < 1 or flush_s <= 0:
            raise ValueError(f"{name}: max_rows and flush_rows must be >= 1 and flush_s > 0")
        self.name, self._write, self.clock = name, write, clock
        self.max_rows, self.flush_rows, self.flush_s = max_rows, flush_rows, flush_s
        self._on_write, self._on_drop, self._on_size = on_write, on_drop, on_size
        self._rows: list[Row] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._oldest: float | None = None      # when the oldest waiting row arrived
        self._retry_at = 0.0                   # after a failed write: not before this time
        self.wake = threading.Event()          # set when a flush is due by count (a Flusher shares one for all)
        self.dropped = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def add(self, rows: Sequence[Row]) -> int:
        """Appends what fits; the rest is dropped and counted (reason `buffer_full`). Returns the rows kept."""
        with self._lock:
            room = max(0, self.max_rows - len(self._rows))
            kept = list(rows[:room])
            self._append(kept)
            dropped = len(rows) - len(kept)
            self.dropped += dropped
        if dropped and self._on_drop:
            self._on_drop("buffer_full", dropped)
        return len(kept)

    def offer(self, rows: Sequence[Row]) -> bool:
        """All the rows or none: False when they do not fit (the caller refuses the request instead)."""
        with self._lock:
            if len(self._rows) + len(rows) > self.max_rows:
                return False
            self._append(list(rows))
        return True

    def _append(self, rows: list[Row]) -> None:  # holding the lock
        if not rows:
            return
        if not self._rows:
            self._oldest = self.clock()
        self._rows.extend(rows)
        if self._on_size:
            self._on_size(len(self._rows))
        if len(self._rows) >= self.flush_rows:
            self.wake.set()

    def due(self) -> bool:
        """Rows wait and a write is due: by count or by the oldest row's age, not before a failure's retry time."""
        now = self.clock()
        with self._lock:
            if not self._rows or now < self._retry_at:
                return False
            return len(self._rows) >= self.flush_rows or (self._oldest is not None
                                                          and now - self._oldest >= self.flush_s)

    def flush(self) -> int:
        """Writes every row held now as one part; returns how many were written (0: none held, or the write
        failed, in which case they stay, in order, ahead of newer rows, for the next flush)."""
        with self._flushing:
            with self._lock:
                batch = list(self._rows)
            if not batch:
                return 0
            try:
                self._write(batch)
            except Exception as err:  # noqa: BLE001 - storage trouble never reaches a request; retried later
                with self._lock:
                    self._retry_at = self.clock() + self.flush_s
                    held = len(self._rows)
                log.error("%s: writing %d rows failed (%s: %s); %d rows kept, retry in %.0f s", self.name,
                          len(batch), type(err).__name__, err, held, self.flush_s)
                if self._on_write:
                    self._on_write("error")
                return 0
            with self._lock:
                del self._rows[:len(batch)]  # rows added during the write stay
                self._oldest = self.clock() if self._rows else None
                self._retry_at = 0.0
                held = len(self._rows)
            if self._on_write:
                self._on_write("ok")
            if self._on_size:
                self._on_size(held)
            return len(batch)


class Flusher:
    """One background thread flushing its buffers when due, and a last time at `stop` (shutdown). It sleeps until a
    buffer reaches its count (the buffers share its wake event) or `poll_s` passed (the age check)."""

    def __init__(self, buffers: Sequence[PartBuffer], poll_s: float = 0.5):
        self.buffers = list(buffers)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        for buffer in self.buffers:
            buffer.wake = self._wake
        self._thread = threading.Thread(target=self._loop, name="capture-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a row added from here on wakes the next wait at once
            for buffer in self.buffers:
                if buffer.due():
                    buffer.flush()
            self._wake.wait(self.poll_s)

    def stop(self) -> None:
        """Ends the thread, then one last flush of every buffer; what still cannot be written is logged."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        for buffer in self.buffers:
            buffer.flush()
            left = len(buffer)
            if left:
                log.error("%s: %d rows could not be written before shutdown and are lost", buffer.name, left)


class RecentIndex:
    """The most recent `size` entries of id -> value, oldest forgotten first (thread-safe)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(frozen=True)
class Captured:
    """What feedback by id needs of a captured instance."""

    text: str
    predicted: int      # class id
    model_version: str


class Production:
    """The predictor's capture and feedback state: the sampler, the two buffers, the flusher, the indexes."""

    def __init__(self, store: Store | None, settings: CaptureSettings, metrics: Any = None,
                 clock: Callable[[], float] = time.monotonic):
        if not 0.0 <= settings.rate <= 1.0:
            raise ValueError(f"capture rate {settings.rate}: expected 0..1")
        if settings.rate > 0 and store is None:
            raise ValueError("capture is on but no production store is set (production_store)")
        self.store, self.settings, self.metrics = store, settings, metrics
        self.random = random.Random(settings.seed)
        m = metrics
        self.captures = PartBuffer(
            "capture", self._writer(CAPTURES, capture_frame), max_rows=settings.buffer,
            flush_rows=settings.flush_rows, flush_s=settings.flush_s, clock=clock,
            on_write=(lambda o: m.capture_writes.labels(o).inc()) if m else None,
            on_drop=(lambda r, n: m.capture_dropped.labels(r).inc(n)) if m else None,
            on_size=m.capture_buffered.set if m else None)
        self.feedback = PartBuffer(
            "feedback", self._writer(FEEDBACK, feedback_frame), max_rows=settings.feedback_buffer,
            flush_rows=settings.feedback_flush_rows, flush_s=settings.feedback_flush_s, clock=clock,
            on_write=(lambda o: m.feedback_writes.labels(o).inc()) if m else None,
            on_size=m.feedback_buffered.set if m else None)
        self.index = RecentIndex(settings.index)
        self.memo = RecentIndex(settings.feedback_memo)  # id -> the answer given when its label was accepted
        # request ids this replica answered but did not sample (capture_rate < 1): a label for one of them is
        # refused (404, send the text) rather than deferred to an ingest that could never find its capture
        self.unsampled = RecentIndex(settings.index)
        poll = min(0.5, settings.flush_s / 4, settings.feedback_flush_s / 4)
        self.flusher = Flusher([self.captures, self.feedback], poll_s=poll) if store is not None else None

    @property
    def capturing(self) -> bool:
        return self.settings.rate > 0

    def _writer(self, kind: str, frame: Callable[[list[Row]], Any]) -> Callable[[list[Row]], Any]:
        def write(rows: list[Row]) -> Any:
            assert self.store is not None, "buffers are only filled when a store is set"
            return self.store.write_part(kind, frame(rows))
        return write

    def start(self) -> None:
        if self.flusher is not None:
            self.flusher.start()

    def stop(self) -> None:
        if self.flusher is not None:
            self.flusher.stop()

    def unique_id(self, request_id: str) -> str:
        """The request id to capture under: the given one, unless this replica already captured or labelled it
        (then it with a random suffix), so one capture id never names two texts."""
        if any(self.index.get(k) is not None or self.memo.get(k) is not None
               for k in (request_id, instance_id(request_id, 0, 2))):
            return f"{request_id[:100]}.{secrets.token_hex(6)}"
        return request_id

    def sampled(self) -> bool:
        rate = self.settings.rate
        return rate >= 1.0 or (rate > 0.0 and self.random.random() < rate)

    def not_sampled(self, request_id: str) -> None:
        self.unsampled.put(request_id, True)

    def answered_unsampled(self, capture_id: str) -> bool:
        """Whether this replica answered the request of `capture_id` (`<id>` or `<id>/<i>`) without capturing it."""
        return self.unsampled.get(capture_id.partition("/")[0]) is not None

    def capture(self, request_id: str, texts: Sequence[str], probs: Sequence[float], model_name: str,
                model_version: str) -> int:
        """A sampled request's instances into the buffer and the index (call only when `sampled()`); returns the
        rows kept. Never raises for a full buffer: those rows are dropped and counted."""
        now = time.time()
        rows = []
        for i, (text, p) in enumerate(zip(texts, probs, strict=True)):
            p = float(p)
            rows.append({"id": instance_id(request_id, i, len(texts)), "ts": now, "text": text,
                         "probability": round(p, RECORD_DECIMALS), "label": LABELS.index(label_of(p)),
                         "model_name": model_name, "model_version": model_version})
        kept = self.captures.add(rows)
        for row in rows[:kept]:
            self.index.put(row["id"], Captured(row["text"], row["label"], model_version))
        if kept and self.metrics is not None:
            self.metrics.captured.inc(kept)
        return kept
