"""The predictor's capture and feedback buffers (steps/serve/capture.py): flushed by count and by age (an injected
clock), a failed write keeps its rows for the next flush, a full buffer drops captures (counted) but refuses
feedback instead, and sampling follows the rate."""
from __future__ import annotations

import threading

import pytest

from sentimentops.steps.core.production import CAPTURES, FEEDBACK, Store
from sentimentops.steps.serve.capture import CaptureSettings, Flusher, PartBuffer, Production, RecentIndex
from sentimentops.steps.serve.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """A write target that can be made to fail (storage down) and back."""

    def __init__(self) -> None:
        self.parts: list[list[dict]] = []
        self.failing = False

    def __call__(self, rows: list[dict]) -> None:
        if self.failing:
            raise OSError("storage down")
        self.parts.append(list(rows))


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"r{i}"} for i in range(start, start + n)]


def buffer(sink: Sink, clock: Clock, **kw) -> PartBuffer:
    events: list[tuple] = []
    kw = {"max_rows": 10, "flush_rows": 4, "flush_s": 30.0, **kw}
    buf = PartBuffer("test", sink, clock=clock, on_write=lambda o: events.append(("write", o)),
                     on_drop=lambda r, n: events.append(("drop", r, n)), **kw)
    buf.events = events  # type: ignore[attr-defined]
    return buf


def test_flush_is_due_by_count():
    sink, clock = Sink(), Clock()
    buf = buffer(sink, clock)
    buf.add(rows(3))
    assert not buf.due() and not buf.wake.is_set()
    buf.add(rows(1, 3))
    assert buf.due() and buf.wake.is_set()
    assert buf.flush() == 4
    assert [r["id"] for r in sink.parts[0]] == ["r0", "r1", "r2", "r3"]
    assert len(buf) == 0 and not buf.due() and buf.events == [("write", "ok")]


def test_flush_is_due_by_the_oldest_rows_age():
    sink, clock = Sink(), Clock()
    buf = buffer(sink, clock)
    buf.add(rows(1))
    clock.now += 29.9
    buf.add(rows(1, 1))  # a newer row does not restart the oldest's clock
    assert not buf.due()
    clock.now += 0.1
    assert buf.due()
    assert buf.flush() == 2
    assert not buf.due()


def test_a_failed_write_keeps_the_rows_and_a_later_flush_writes_them_in_order():
    sink, clock = Sink(), Clock()
    buf = buffer(sink, clock)
    sink.failing = True
    buf.add(rows(4))
    assert buf.flush() == 0
    assert len(buf) == 4 and sink.parts == []
    assert not buf.due()  # no hot retry loop: the next attempt waits flush_s
    buf.add(rows(2, 4))  # rows keep arriving while storage is down
    clock.now += 30
    assert buf.due()
    sink.failing = False
    assert buf.flush() == 6
    assert [r["id"] for r in sink.parts[0]] == [f"r{i}" for i in range(6)]
    assert buf.events == [("write", "error"), ("write", "ok")] and len(buf) == 0


def test_a_full_buffer_drops_new_captures_and_counts_them():
    sink, clock = Sink(), Clock()
    buf = buffer(sink, clock, max_rows=5)
    sink.failing = True
    assert buf.add(rows(3)) == 3
    assert buf.add(rows(4, 3)) == 2  # what fits is kept, the rest dropped
    assert buf.add(rows(1, 7)) == 0
    assert buf.dropped == 3 and buf.events[-2:] == [("drop", "buffer_full", 2), ("drop", "buffer_full", 1)]
    sink.failing = False
    assert buf.flush() == 5
    assert [r["id"] for r in sink.parts[0]] == ["r0", "r1", "r2", "r3", "r4"]


def test_offer_is_all_or_nothing():
    sink, clock = Sink(), Clock()
    buf = buffer(sink, clock, max_rows=2)
    assert buf.offer(rows(2))
    assert not buf.offer(rows(1, 2))  # refused, not dropped: the caller answers 503
    assert len(buf) == 2 and buf.dropped == 0


def test_rows_added_during_a_write_stay_for_the_next_one():
    clock = Clock()
    entered, release = threading.Event(), threading.Event()
    written: list[list[dict]] = []

    def slow(batch):
        entered.set()
        assert release.wait(10)
        written.append(batch)

    buf = PartBuffer("test", slow, max_rows=10, flush_rows=1, flush_s=30, clock=clock)
    buf.add(rows(2))
    worker = threading.Thread(target=buf.flush)
    worker.start()
    assert entered.wait(10)
    buf.add(rows(1, 2))
    release.set()
    worker.join(10)
    assert [r["id"] for r in written[0]] == ["r0", "r1"] and len(buf) == 1
    assert buf.flush() == 1 and written[1] == [{"id": "r2"}]


def test_the_flusher_writes_when_due_and_at_stop():
    sink = Sink()
    buf = PartBuffer("test", sink, max_rows=100, flush_rows=3, flush_s=3600)
    flusher = Flusher([buf], poll_s=0.05)
    flusher.start()
    buf.add(rows(3))
    for _ in range(400):  # bounded wait for the condition
        if sink.parts:
            break
        threading.Event().wait(0.025)
    assert [len(p) for p in sink.parts] == [3]
    buf.add(rows(1, 3))  # below both thresholds: only the shutdown flush writes it
    flusher.stop()
    assert [len(p) for p in sink.parts] == [3, 1]


def test_the_recent_index_forgets_the_oldest():
    index = RecentIndex(2)
    for key in ("a", "b", "c"):
        index.put(key, key.upper())
    assert (index.get("a"), index.get("b"), index.get("c"), len(index)) == (None, "B", "C", 2)


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (1.0, 1000, 1000), (0.25, 200, 300)])
def test_sampling_follows_the_rate(tmp_path, rate, low, high):
    production = Production(Store(str(tmp_path)), CaptureSettings(rate=rate, seed=7))
    taken = sum(production.sampled() for _ in range(1000))
    assert low <= taken <= high


def test_capture_rows_ids_and_metrics(tmp_path):
    metrics = Metrics()
    production = Production(Store(str(tmp_path)), CaptureSettings(rate=1.0, flush_rows=100), metrics)
    assert production.capture("req", ["good", "bad"], [0.9, 0.2], "sentiment", "3") == 2
    assert production.capture("one", ["fine"], [0.6], "sentiment", "3") == 1
    assert production.index.get("req/1").predicted == 0 and production.index.get("one").text == "fine"
    assert production.captures.flush() == 3
    frame = Store(str(tmp_path)).read_parts(CAPTURES)
    assert list(frame["id"]) == ["req/0", "req/1", "one"] and list(frame["label"]) == [1, 0, 1]
    assert list(frame["probability"]) == [0.9, 0.2, 0.6] and set(frame["model_version"]) == {"3"}
    text = metrics.exposition().decode()
    assert "sentiment_captured_total 3.0" in text
    assert 'sentiment_capture_writes_total{outcome="ok"} 1.0' in text
    assert "sentiment_capture_buffered 0.0" in text
    assert Store(str(tmp_path)).parts(FEEDBACK) == []


def test_capture_needs_a_store_and_a_rate_in_range(tmp_path):
    with pytest.raises(ValueError, match="no production store"):
        Production(None, CaptureSettings(rate=0.5))
    with pytest.raises(ValueError, match="0..1"):
        Production(Store(str(tmp_path)), CaptureSettings(rate=1.5))


def test_a_conflicting_label_is_409_in_the_status_table():
    from sentimentops.steps.serve.errors import Conflict, error_response

    status, body, headers = error_response(Conflict("x"))
    assert (status.code, status.reason, body, headers) == (409, "invalid_input", {"error": "x"}, {})
