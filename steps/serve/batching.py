"""Dynamic batching inside the predictor: requests of both protocols queue their tokenized instances here; worker
threads take them, group them by length and run the model once per group.

When to wait: an instance that arrives while every worker is idle goes to the model at once (waiting `max_wait_ms`
for company would only add latency: nothing else is running). While another worker is busy, a worker waits up to
`max_wait_ms` (or until `max_batch_size` instances wait), because under load a batch is what raises throughput.
Why `workers` threads (one per core by default, each running single-threaded model calls): with one call spread
over both cores every op ends in a barrier that waits for the slower thread, and on a shared node (another process
on the second core) that stalls every op; independent single-threaded calls, one per core, never wait for each
other (measured here under load: 8x256 tokens at 1950 tokens/s on one thread against 1600 on two).
Why a solo path: a lone request on one idle machine would then use one core of two. When nothing else waits and no
other worker is busy, a small batch (at most `solo_max_tokens` padded tokens) runs on `run_solo`, the all-cores
call, and the other workers hold off until it is done (measured: 55 tokens in 10 ms on two threads, 19 on one).
Why length grouping: a batch is padded to its longest instance, and on a CPU a bigger batch of long inputs buys
almost nothing (tokens/s is flat from batch 1 at 300 tokens), so padding is pure waste: the gathered instances are
sorted by length and cut into groups whose padding stays under `max_padding` of their real tokens and whose size
stays under a token budget (rows x longest <= max_batch_tokens). A worker runs one group per take, the one holding
the oldest instance, and puts the rest back at the head of the queue, so an idle worker picks them up at once
instead of waiting behind its neighbour's whole take (the first version ran every group of a take in one worker:
p99 764 ms at 70% of peak on full reviews). Why a bounded queue: past `max_queue` waiting instances a request is
refused at once with 503 + Retry-After (errors.Overloaded) instead of growing memory and latency without bound.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sentimentops.steps.core.backends import Encoded
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.serve.errors import Overloaded

log = get_logger("sentimentops.serve.batching")


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int = 32        # instances gathered per cycle
    max_wait_ms: float = 5.0        # under load: how long the first waiting instance may wait for company
    max_queue: int = 256            # waiting instances before 503 (about 8 full batches of backlog)
    max_batch_tokens: int = 512     # rows x padded length per model call (1 full review, ~9 snippets)
    max_padding: float = 0.25       # a group is cut before its padding exceeds this share of its real tokens
    workers: int = 1                # model-calling threads (the predictor uses one per core for ONNX)
    solo_max_tokens: int = 1024     # an idle server runs a batch this small (padded tokens) on all cores
    wait_when_idle: bool = False    # gather for max_wait_ms even when no worker is busy (fuller batches, slower)


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


def group_by_length(items: list, lengths: list[int], max_batch_tokens: int,
                    max_padding: float = float("inf")) -> list[list]:
    """Sorted by length, cut so that each group's rows x longest length stays within max_batch_tokens and its
    padded size within (1 + max_padding) x its real tokens (a single instance longer than the budget still forms
    its own group)."""
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    groups: list[list] = []
    current: list = []
    real = 0
    for i in order:
        width = lengths[i]  # ascending: the newest member is the longest
        padded = width * (len(current) + 1)
        if current and (padded > max_batch_tokens or padded > (1 + max_padding) * (real + width)):
            groups.append(current)
            current, real = [], 0
        current.append(items[i])
        real += width
    if current:
        groups.append(current)
    return groups


class Batcher:
    """`await submit(encoded)` -> P(positive) per instance, computed in batches by `run(list[Encoded])`."""

    def __init__(self, run: Callable[[list[Encoded]], np.ndarray], settings: BatchSettings | None = None,
                 on_batch: Callable[[list[Encoded], np.ndarray], None] | None = None,
                 on_depth: Callable[[int], None] | None = None,
                 run_solo: Callable[[list[Encoded]], np.ndarray] | None = None):
        self.run = run
        self.settings = settings or BatchSettings()
        self.on_batch = on_batch
        self.on_depth = on_depth or (lambda depth: None)
        self.run_solo = run_solo
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = 0          # workers inside a model call
        self._solo = False      # a solo (all-cores) call is running: the other workers hold off
        self._threads: list[threading.Thread] = []

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
                             for i in range(max(1, self.settings.workers))]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes every queued instance, then ends the worker (the SIGTERM drain's last step)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    async def submit(self, encoded: list[Encoded]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        request = _Request(loop, loop.create_future(), np.zeros(len(encoded)), len(encoded))
        with self._cond:
            if self._stopping:
                from sentimentops.steps.serve.errors import NotReady

                raise NotReady("the server is shutting down")
            if len(self._queue) + len(encoded) > self.settings.max_queue:
                raise Overloaded(f"overloaded: {len(self._queue)} instances already wait (limit "
                                 f"{self.settings.max_queue}); retry later")
            self._queue.extend(_Item(request, i, e) for i, e in enumerate(encoded))
            self.on_depth(len(self._queue))
            self._cond.notify()
        return await request.future

    def _take(self) -> tuple[list[_Item], bool] | None:
        """(one length group, solo?) or None when stopping with nothing left."""
        s = self.settings
        with self._cond:
            while True:
                while not self._queue or self._solo:
                    if self._stopping and not self._queue:
                        return None
                    self._cond.wait()
                if not self._busy and not s.wait_when_idle:  # idle: go at once
                    break
                deadline = self._queue[0].enqueued + s.max_wait_ms / 1000  # under load: a batch is worth a wait
                while self._queue and len(self._queue) < s.max_batch_size and not (self._stopping or self._solo):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._queue and not self._solo:
                    break
            taken = [self._queue.popleft() for _ in range(min(s.max_batch_size, len(self._queue)))]
            groups = group_by_length(taken, [t.encoded.length for t in taken], s.max_batch_tokens, s.max_padding)
            group = next(g for g in groups if any(item is taken[0] for item in g))  # the oldest goes first
            members = {id(item) for item in group}
            rest = [item for item in taken if id(item) not in members]
            self._queue.extendleft(reversed(rest))  # back at the head, in arrival order, for the next worker
            solo = (self.run_solo is not None and not self._busy and not self._queue
                    and len(group) * max(t.encoded.length for t in group) <= s.solo_max_tokens)
            self._busy += 1
            self._solo = solo
            self.on_depth(len(self._queue))
            if self._queue:
                self._cond.notify()
            return group, solo

    def _done(self, solo: bool) -> None:
        with self._cond:
            self._busy -= 1
            if solo:
                self._solo = False
            self._cond.notify_all()

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            group, solo = taken
            batch = [t.encoded for t in group]
            try:
                probs = (self.run_solo if solo and self.run_solo is not None else self.run)(batch)
            except Exception as exc:
                log.exception("model call failed for a batch of %d", len(batch))
                for item in group:
                    _fail(item.request, exc)
                continue
            finally:
                self._done(solo)
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


_DELIVERY = threading.Lock()  # one request's instances may be computed by different workers


def _deliver(item: _Item, p: float) -> None:
    request = item.request
    with _DELIVERY:
        if request.remaining <= 0:  # already failed
            return
        request.probs[item.index] = p
        request.remaining -= 1
        done = request.remaining == 0
    if done:
        request.loop.call_soon_threadsafe(_resolve, request, request.probs)


def _fail(request: _Request, exc: BaseException) -> None:
    with _DELIVERY:
        failed, request.remaining = request.remaining > 0, 0
    if failed:
        request.loop.call_soon_threadsafe(_resolve, request, None, exc)
