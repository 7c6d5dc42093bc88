"""Dynamic batching inside the predictor: requests of both protocols queue their tokenized instances here; one
worker thread gathers them for at most `max_wait_ms` (or until `max_batch_size` instances wait), groups them by
length and runs the model once per group.

Why one worker thread: ONNX Runtime already uses every core inside one call (intra-op threads), so two model calls
at once only fight over the cores; the event loop stays free to parse, tokenize and answer while the model runs.
Why length grouping: a batch is padded to its longest instance; sorting the gathered instances by length and
cutting groups at a token budget (rows x longest <= max_batch_tokens) keeps short snippets out of a 512-token
review's padding. Why a bounded queue: past `max_queue` waiting instances a request is refused at once with 503 +
Retry-After (errors.Overloaded) instead of growing memory and latency without bound.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from steps.serve.backends import Encoded
from steps.serve.errors import Overloaded

log = logging.getLogger("sentimentops.serve.batching")


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int = 32        # instances gathered per cycle
    max_wait_ms: float = 5.0        # how long the first waiting instance may wait for company
    max_queue: int = 256            # waiting instances before 503 (about 8 full batches of backlog)
    max_batch_tokens: int = 8192    # rows x padded length per model call (16 full-length reviews)


@dataclass
class _Request:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    probs: np.ndarray
    remaining: int


@dataclass
class _Item:
    request: _Request
    index: int
    encoded: Encoded
    enqueued: float = field(default_factory=time.monotonic)


def group_by_length(items: list, lengths: list[int], max_batch_tokens: int) -> list[list]:
    """Sorted by length, cut so that each group's rows x longest length stays within max_batch_tokens (a single
    instance longer than the budget still forms its own group)."""
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    groups: list[list] = []
    current: list = []
    longest = 0
    for i in order:
        width = max(longest, lengths[i])
        if current and width * (len(current) + 1) > max_batch_tokens:
            groups.append(current)
            current, width = [], lengths[i]
        current.append(items[i])
        longest = width
    if current:
        groups.append(current)
    return groups


class Batcher:
    """`await submit(encoded)` -> P(positive) per instance, computed in batches by `run(list[Encoded])`."""

    def __init__(self, run: Callable[[list[Encoded]], np.ndarray], settings: BatchSettings | None = None,
                 on_batch: Callable[[list[Encoded], np.ndarray], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        self.run = run
        self.settings = settings or BatchSettings()
        self.on_batch = on_batch
        self.on_depth = on_depth or (lambda depth: None)
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes every queued instance, then ends the worker (the SIGTERM drain's last step)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    async def submit(self, encoded: list[Encoded]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        request = _Request(loop, loop.create_future(), np.zeros(len(encoded)), len(encoded))
        with self._cond:
            if self._stopping:
                from steps.serve.errors import NotReady

                raise NotReady("the server is shutting down")
            if len(self._queue) + len(encoded) > self.settings.max_queue:
                raise Overloaded(f"overloaded: {len(self._queue)} instances already wait (limit "
                                 f"{self.settings.max_queue}); retry later")
            self._queue.extend(_Item(request, i, e) for i, e in enumerate(encoded))
            self.on_depth(len(self._queue))
            self._cond.notify()
        return await request.future

    def _take(self) -> list[_Item] | None:
        s = self.settings
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + s.max_wait_ms / 1000
            while len(self._queue) < s.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken = [self._queue.popleft() for _ in range(min(s.max_batch_size, len(self._queue)))]
            self.on_depth(len(self._queue))
            return taken

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            for group in group_by_length(taken, [t.encoded.length for t in taken], self.settings.max_batch_tokens):
                batch = [t.encoded for t in group]
                try:
                    probs = self.run(batch)
                except Exception as exc:
                    log.exception("model call failed for a batch of %d", len(batch))
                    for item in group:
                        _fail(item.request, exc)
                    continue
                if self.on_batch is not None:
                    try:
                        self.on_batch(batch, probs)
                    except Exception:
                        log.exception("batch hook failed")
                for item, p in zip(group, probs, strict=True):
                    _deliver(item, float(p))


def _resolve(request: _Request, value=None, exc: BaseException | None = None) -> None:
    if request.future.done():  # the client went away (cancelled): nothing to tell
        return
    if exc is not None:
        request.future.set_exception(exc)
    else:
        request.future.set_result(value)


def _deliver(item: _Item, p: float) -> None:
    request = item.request
    request.probs[item.index] = p
    request.remaining -= 1
    if request.remaining == 0:
        request.loop.call_soon_threadsafe(_resolve, request, request.probs)


def _fail(request: _Request, exc: BaseException) -> None:
    if request.remaining > 0:
        request.remaining = 0
        request.loop.call_soon_threadsafe(_resolve, request, None, exc)
