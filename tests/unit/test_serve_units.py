"""The predictor's pure parts: the status table, V1/V2 parsing, length grouping, the bounded batcher, the
prediction records, the metric names of docs/metrics.md, artifact lookup, backend choice and the int8 bound."""
from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kserve.errors import InvalidInput as KServeInvalidInput

from sentimentops.steps.core.backends import Encoded
from sentimentops.steps.core.contract import ModelFolder, choose_backend, read_model_folder
from sentimentops.steps.evaluate.onnx_export import ExportReport
from sentimentops.steps.serve import errors
from sentimentops.steps.serve.app import parse_v2
from sentimentops.steps.serve.batching import Batcher, BatchSettings, group_by_length
from sentimentops.steps.serve.metrics import PROTOCOLS, Metrics
from sentimentops.steps.serve.records import PredictionLog, record

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


@pytest.mark.parametrize(("exc", "code", "reason"), [
    (errors.InvalidInput("x"), 400, "invalid_input"),
    (KServeInvalidInput("x"), 400, "invalid_input"),
    (errors.InputTooLong("x"), 400, "invalid_input"),
    (errors.NotFound("x"), 404, "invalid_input"),
    (errors.PayloadTooLarge("x"), 413, "payload_too_large"),
    (errors.UnsupportedMediaType("x"), 415, "invalid_input"),
    (errors.Conflict("x"), 409, "invalid_input"),
    (errors.Overloaded("x"), 503, "overloaded"),
    (errors.NotReady("x"), 503, "not_ready"),
    (RuntimeError("secret detail"), 500, "internal"),
    (KeyError("k"), 500, "internal"),
])
def test_status_table_is_pinned(exc, code, reason):
    status, body, headers = errors.error_response(exc)
    assert (status.code, status.reason) == (code, reason)
    assert reason in errors.REASONS
    assert ("Retry-After" in headers) == (code == 503)  # backpressure always tells the client when to retry
    if code == 500:
        assert "secret" not in body["error"]  # internals never reach the client
    else:
        assert body["error"] == "x"


def test_invalid_input_is_also_kserves_400():
    assert isinstance(errors.InvalidInput("x"), KServeInvalidInput)


def v2(data, shape=None, **tensor):
    body = {"name": "text", "datatype": "BYTES", "shape": shape or [len(data)], "data": data}
    body.update(tensor)
    return {"inputs": [body]}


def test_v2_parses_flat_and_nested_data_and_outputs():
    assert parse_v2(v2(["a", "b"])) == (["a", "b"], None, ["label", "probability"])
    assert parse_v2(v2([["a"], ["b"]], shape=[2, 1]))[0] == ["a", "b"]
    body = {**v2(["a"]), "id": "r1", "outputs": [{"name": "probability"}]}
    assert parse_v2(body) == (["a"], "r1", ["probability"])


@pytest.mark.parametrize(("body", "message"), [
    ({}, '"inputs"'),
    ({"inputs": []}, '"inputs"'),
    ({"inputs": [v2(["a"])["inputs"][0]] * 2}, "exactly one"),
    (v2(["a"], name="txt"), 'name must be "text"'),
    (v2(["a"], datatype="FP32"), "BYTES"),
    (v2(["a"], shape=[0]), "shape"),
    (v2(["a"], shape=[True]), "shape"),
    (v2(["a", "b"], shape=[3]), "3 elements"),
    (v2([1]), "expected a string"),
    (v2([" "]), "empty"),
    ({**v2(["a"]), "id": 5}, '"id"'),
    ({**v2(["a"]), "outputs": [{"name": "logits"}]}, "unknown outputs"),
])
def test_v2_rejects_with_a_message(body, message):
    with pytest.raises(errors.InvalidInput, match=re.escape(message)):
        parse_v2(body)


def test_length_groups_are_sorted_and_within_the_token_budget():
    lengths = [500, 10, 12, 300, 11, 510, 9]
    groups = group_by_length(list(range(7)), lengths, max_batch_tokens=1024)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(7))
    assert [lengths[i] for i in flat] == sorted(lengths)  # short ones never share a long one's padding first
    for g in groups:
        assert len(g) == 1 or max(lengths[i] for i in g) * len(g) <= 1024
    assert group_by_length([0], [4000], 1024) == [[0]]  # longer than the budget: alone, not dropped


def test_length_groups_bound_their_padding():
    lengths = [40, 42, 45, 50, 120, 130, 500, 510]
    groups = group_by_length(list(range(8)), lengths, max_batch_tokens=8192, max_padding=0.25)
    for g in groups:
        real = sum(lengths[i] for i in g)
        assert max(lengths[i] for i in g) * len(g) <= 1.25 * real
    assert [len(g) for g in groups] == [4, 2, 2]  # snippets together, long reviews together


def test_several_workers_split_requests_safely():
    def run(batch):
        return np.array([e.length / 1000 for e in batch])

    batcher = Batcher(run, BatchSettings(max_batch_size=2, max_wait_ms=1, workers=2))
    batcher.start()

    async def go():
        return await asyncio.gather(*(batcher.submit([enc(n), enc(n + 1), enc(n + 2)]) for n in range(1, 40, 3)))

    try:
        results = asyncio.run(go())
    finally:
        batcher.stop()
    assert [list(r) for r in results] == [[n / 1000, (n + 1) / 1000, (n + 2) / 1000] for n in range(1, 40, 3)]


def enc(n: int) -> Encoded:
    return Encoded(ids=list(range(n)), truncated=False, content=0.0)


def test_batcher_answers_in_order_and_batches_concurrent_requests():
    calls = []

    def run(batch):
        calls.append([e.length for e in batch])
        return np.array([e.length / 1000 for e in batch])

    batcher = Batcher(run, BatchSettings(max_batch_size=8, max_wait_ms=200, max_queue=64))
    batcher.start()

    async def go():
        return await asyncio.gather(batcher.submit([enc(30), enc(5)]), batcher.submit([enc(7)]),
                                    batcher.submit([enc(400)]))

    try:
        results = asyncio.run(go())
    finally:
        batcher.stop()
    assert [list(r) for r in results] == [[0.03, 0.005], [0.007], [0.4]]
    assert sum(len(c) for c in calls) == 4 and len(calls) < 4  # batched, not one call per instance
    assert all(c == sorted(c) for c in calls)


def test_full_queue_refuses_with_overloaded_and_never_grows():
    release, started = threading.Event(), threading.Event()

    def run(batch):
        started.set()
        release.wait(10)
        return np.zeros(len(batch))

    batcher = Batcher(run, BatchSettings(max_batch_size=1, max_wait_ms=0, max_queue=3))
    batcher.start()

    async def go():
        first = asyncio.create_task(batcher.submit([enc(3)]))  # taken by the worker, which then blocks
        assert await asyncio.to_thread(started.wait, 10)
        queued = asyncio.create_task(batcher.submit([enc(3)] * 3))  # fills the queue exactly
        while batcher.depth < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(errors.Overloaded):
            await batcher.submit([enc(3)])
        assert batcher.depth == 3
        release.set()
        return await first, await queued

    try:
        first, queued = asyncio.run(go())
    finally:
        release.set()
        batcher.stop()
    assert len(first) == 1 and len(queued) == 3


def test_a_failing_model_call_fails_its_requests_not_the_worker():
    def run(batch):
        if any(e.length == 13 for e in batch):
            raise RuntimeError("boom")
        return np.ones(len(batch))

    batcher = Batcher(run, BatchSettings(max_batch_size=1, max_wait_ms=0))
    batcher.start()

    async def go():
        with pytest.raises(RuntimeError):
            await batcher.submit([enc(13)])
        return await batcher.submit([enc(4)])

    try:
        assert list(asyncio.run(go())) == [1.0]
    finally:
        batcher.stop()


def test_prediction_records_follow_the_contract_and_rotate(tmp_path):
    log = PredictionLog(tmp_path / "p.jsonl", max_bytes=600, backups=2)
    for _ in range(10):
        log.write([record("3", 231, False, 0.985, 0.12, ts=1764201600.12)])
    log.close()
    line = json.loads((tmp_path / "p.jsonl.1").read_text().splitlines()[0])
    assert line == {"ts": 1764201600.12, "model_version": "3", "input_tokens": 231, "truncated": False,
                    "confidence": 0.985, "probability": 0.985, "label": "positive", "content": 0.12}
    assert not (tmp_path / "p.jsonl.3").exists()  # only `backups` old files are kept
    assert "text" in record("3", 5, False, 0.2, 0.0, text="hi")
    assert record("3", 5, False, 0.2, 0.0)["confidence"] == 0.8


def test_the_drift_reference_is_published_next_to_the_records_atomically(tmp_path, monkeypatch):
    """`drift watch --reference <dir>/drift_reference.json` in the sidecar reads what the predictor publishes on
    each model load: a whole file (a temporary in the same folder, then one rename), never half of one; a model
    without a reference removes a stale one, so the monitor waits instead of comparing against another model."""
    import os

    from sentimentops.steps.serve import records as records_mod

    log = PredictionLog(tmp_path / "predictions" / "records.jsonl")
    source = tmp_path / "artifact.json"
    source.write_text('{"version": 1, "features": {}}')
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(records_mod.os, "replace", lambda a, b: (renames.append((Path(a), Path(b))),
                                                                 real_replace(a, b))[1])
    target = log.publish_reference(source)
    assert target == tmp_path / "predictions" / "drift_reference.json" == records_mod.reference_path(log.path)
    assert target.read_bytes() == source.read_bytes()
    ((tmp, dst),) = renames
    assert dst == target and tmp.parent == target.parent  # same folder: the rename is atomic
    assert sorted(p.name for p in target.parent.iterdir()) == ["drift_reference.json", "records.jsonl"]
    source.write_text('{"version": 2, "features": {}}')  # the next load publishes its own
    assert log.publish_reference(source).read_text().endswith('2, "features": {}}')
    assert log.publish_reference(None) is None and not target.exists()
    log.close()


def test_every_documented_serving_metric_is_exported():
    documented = re.findall(r"^\| `(sentiment_[a-z_]+)` \|", DOCS.read_text(), flags=re.MULTILINE)
    serving = [n for n in documented if not n.startswith("sentiment_drift")]
    metrics = Metrics()
    metrics.set_model("sentiment", "3", "abc", "onnx-int8")
    metrics.observe_request("v1", 200, 0.01, None)
    metrics.observe_request("v2", 503, 0.01, "overloaded")
    metrics.observe_batch([12, 512], 1, [0.9, 0.2])
    text = metrics.exposition().decode()
    for name in serving:
        assert re.search(rf"^{name}(_bucket|_total|_sum|_count)?[{{ ]", text, flags=re.MULTILINE), name
    assert 'sentiment_model_info{backend="onnx-int8",model_name="sentiment",model_version="3",run_id="abc"} 1.0' \
        in text
    assert 'sentiment_errors_total{protocol="v2",reason="overloaded",status="503"} 1.0' in text
    assert 'sentiment_predictions_total{label="negative"} 1.0' in text
    assert "sentiment_truncated_total 1.0" in text


def test_request_series_exist_at_zero_before_the_first_request():
    # Incident (issue 10): a burst served before Prometheus's first scrape made the request counter appear with its
    # final count, flat inside every window: rate() 0, the error-ratio rule recorded nothing, and the dashboards
    # fixture timed out on a fast CPU. Every protocol's success series is exported at 0 from the start.
    text = Metrics().exposition().decode()
    for protocol in PROTOCOLS:
        assert f'sentiment_requests_total{{protocol="{protocol}",status="200"}} 0.0' in text
        assert f'sentiment_request_duration_seconds_count{{protocol="{protocol}",status="200"}} 0.0' in text
    for label in ("negative", "positive"):
        assert f'sentiment_predictions_total{{label="{label}"}} 0.0' in text


def test_pyfunc_folder_artifacts_come_from_the_mlmodel_mapping(tmp_path):
    (tmp_path / "artifacts" / "hf").mkdir(parents=True)
    (tmp_path / "MLmodel").write_text(
        "run_id: r42\nflavors:\n  python_function:\n    artifacts:\n"
        "      model_dir: {path: artifacts/hf}\n      onnx: {path: artifacts/x}\n"
        "      drift_reference: {path: artifacts/drift_reference.json}\n")
    found = read_model_folder(tmp_path)
    assert found == ModelFolder(tmp_path, tmp_path / "artifacts/hf", tmp_path / "artifacts/x",
                                tmp_path / "artifacts/drift_reference.json", "r42")
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts: {}\n")
    with pytest.raises(FileNotFoundError, match="model_dir"):
        read_model_folder(tmp_path)


def test_backend_choice(tmp_path):
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    plain = ModelFolder(tmp_path, tmp_path)
    assert choose_backend(plain, "auto", gpu=False) == "torch"  # no export: torch
    (onnx / "model.onnx").write_bytes(b"")
    exported = ModelFolder(tmp_path, tmp_path, onnx)
    report = ExportReport("int8", 0.8, 0.799, 0.1, True, "t.parquet", 10, 1.0)
    (onnx / "export.json").write_text(json.dumps(report.__dict__))
    assert choose_backend(exported, "auto", gpu=False) == "onnx-int8"
    assert choose_backend(exported, "auto", gpu=True) == "torch"  # the GPU path
    assert choose_backend(exported, "torch", gpu=False) == "torch"  # an explicit choice wins
    (onnx / "export.json").write_text(json.dumps({**report.__dict__, "precision": "fp32"}))
    assert choose_backend(exported, "auto", gpu=False) == "onnx-fp32"  # int8 refused at registration


def _paired(b: int, c: int, same: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models' P(positive): `b` rows only fp32 gets right, `c` only int8, `same` both right."""
    labels = np.ones(b + c + same, dtype=int)
    fp32 = np.array([0.9] * b + [0.1] * c + [0.9] * same)
    int8 = np.array([0.1] * b + [0.9] * c + [0.9] * same)
    return labels, fp32, int8


@pytest.mark.parametrize(("b", "c", "same", "accepted", "why"), [
    (3, 0, 497, True, "kept"),      # issue 14's case: 0.6 points on 500 rows, three reviews: noise, int8 kept
    (8, 1, 991, False, "worse"),    # p = 10/512 = 0.0195 < 0.05: refused
    (6, 2, 992, True, "kept"),      # p = 37/256 = 0.145: not evidence
    (0, 0, 100, True, "kept"),      # identical answers
    (5, 5, 990, True, "kept"),      # as many wins as losses
    (9, 0, 991, False, "worse"),    # p = 2**-9: int8 answers worse
    (20, 20, 960, False, "agreement"),  # same accuracy, but 4% of the answers changed
])
def test_int8_decision_is_a_paired_test(b, c, same, accepted, why):
    from sentimentops.steps.evaluate.onnx_export import mcnemar_p, paired_check

    labels, fp32, int8 = _paired(b, c, same)
    check = paired_check(labels, fp32, int8, alpha=0.05, min_agreement=0.97)
    assert check.accepted is accepted and why in check.reason
    assert (check.fp32_only_right, check.int8_only_right) == (b, c)
    assert check.agreement == pytest.approx(same / (b + c + same))
    assert check.p_value == pytest.approx(mcnemar_p(b, c))


def test_mcnemar_exact_values():
    from sentimentops.steps.evaluate.onnx_export import mcnemar_p

    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 0) == pytest.approx(1 / 8)  # three reviews one way: p 0.125, not evidence
    assert mcnemar_p(0, 3) == 1.0
    assert mcnemar_p(2, 2) == pytest.approx(11 / 16)
    assert mcnemar_p(8, 1) == pytest.approx(10 / 512)
    assert mcnemar_p(6, 2) == pytest.approx(37 / 256)


def test_an_idle_batcher_answers_a_lone_request_without_waiting_for_company():
    batcher = Batcher(lambda batch: np.ones(len(batch)), BatchSettings(max_wait_ms=2000, workers=2))
    batcher.start()

    async def go():
        start = time.monotonic()
        await batcher.submit([enc(5)])
        return time.monotonic() - start

    try:
        assert asyncio.run(go()) < 1.0  # not the 2 s max_wait: nothing else was running
    finally:
        batcher.stop()


def test_under_load_instances_wait_for_company_and_go_in_one_call():
    release, calls = threading.Event(), []

    def run(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            release.wait(10)  # the first call keeps the only worker busy
        return np.zeros(len(batch))

    batcher = Batcher(run, BatchSettings(max_wait_ms=300, max_batch_size=8))
    batcher.start()

    async def go():
        first = asyncio.create_task(batcher.submit([enc(4)]))
        while not calls:
            await asyncio.sleep(0.01)
        rest = [asyncio.create_task(batcher.submit([enc(4)])) for _ in range(5)]
        await asyncio.sleep(0.05)
        release.set()
        await first
        await asyncio.gather(*rest)

    try:
        asyncio.run(go())
    finally:
        release.set()
        batcher.stop()
    assert calls == [1, 5]


def test_a_take_runs_one_length_group_and_leaves_the_rest_to_the_next_worker():
    short_started, release, long_done = threading.Event(), threading.Event(), threading.Event()

    def run(batch):
        if batch[0].length == 100:
            short_started.set()
            release.wait(10)  # holds its worker: the other group must not wait behind it
        if batch[0].length == 400:
            long_done.set()
        return np.zeros(len(batch))

    batcher = Batcher(run, BatchSettings(max_wait_ms=0, max_batch_size=8, workers=2, max_padding=0.25))
    batcher.start()

    async def go():
        task = asyncio.create_task(batcher.submit([enc(400), enc(100)]))  # two length groups in one take
        await asyncio.to_thread(short_started.wait, 10)
        # the oldest instance's group runs first, the other went back to the queue for the second worker
        assert await asyncio.to_thread(long_done.wait, 5)
        release.set()
        return await task

    try:
        assert len(asyncio.run(go())) == 2
    finally:
        release.set()
        batcher.stop()


def test_a_lone_small_batch_runs_solo_on_all_cores_and_the_other_workers_hold_off():
    lock, state = threading.Lock(), {"running": 0, "max_during_solo": 0, "solo": 0, "plain": 0}
    solo_started, release = threading.Event(), threading.Event()

    def plain(batch):
        with lock:
            state["plain"] += 1
            state["running"] += 1
        time.sleep(0.01)
        with lock:
            state["running"] -= 1
        return np.zeros(len(batch))

    def solo(batch):
        with lock:
            state["solo"] += 1
        solo_started.set()
        release.wait(10)
        with lock:
            state["max_during_solo"] = max(state["max_during_solo"], state["running"])
        return np.ones(len(batch))

    batcher = Batcher(plain, BatchSettings(max_wait_ms=0, workers=2, solo_max_tokens=64), run_solo=solo)
    batcher.start()

    async def go():
        lone = asyncio.create_task(batcher.submit([enc(20)]))
        await asyncio.to_thread(solo_started.wait, 10)
        second = asyncio.create_task(batcher.submit([enc(20)]))  # arrives during the solo call: waits for it
        await asyncio.sleep(0.1)
        assert state["plain"] == 0 and not second.done()
        release.set()
        first = await lone
        await second
        big = await batcher.submit([enc(100)])  # over solo_max_tokens: the per-core path
        return first, big

    try:
        first, big = asyncio.run(go())
    finally:
        release.set()
        batcher.stop()
    assert list(first) == [1.0] and list(big) == [0.0]
    assert state["solo"] >= 1 and state["max_during_solo"] == 0


def test_wait_when_idle_gathers_even_on_an_idle_batcher():
    calls = []

    def run(batch):
        calls.append(len(batch))
        return np.zeros(len(batch))

    batcher = Batcher(run, BatchSettings(max_wait_ms=1500, max_batch_size=8, wait_when_idle=True))
    batcher.start()

    async def go():
        first = asyncio.create_task(batcher.submit([enc(4)]))
        await asyncio.sleep(0.05)  # the worker already holds the first instance, waiting for company
        await asyncio.gather(first, batcher.submit([enc(4)]), batcher.submit([enc(4)]))

    try:
        asyncio.run(go())
    finally:
        batcher.stop()
    assert calls == [3]


def test_model_uri_without_mlflow_is_a_clear_error_not_a_traceback(monkeypatch, caplog, home):
    import sys

    from sentimentops.steps.serve import server

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as in the serve image: `import mlflow` fails
    monkeypatch.setitem(sys.modules, "mlflow.exceptions", None)
    assert server.main(["--model-uri", "models:/sentiment@champion"]) == 2
    err = caplog.text  # logged (core.logs), not printed
    assert "needs MLflow" in err and "inferenceService.storageUri" in err and "Traceback" not in err
