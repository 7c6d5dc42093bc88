"""Capture and feedback on a real predictor process (`sentimentops serve` on 127.0.0.1, the tiny model's ONNX
export, as tests/integration/test_serve_http.py serves it): request ids on every predict-type answer, errors
included; captured parts whose rows are the answers; POST /v1/feedback's status table with no 5xx and its metric
counted once per id; a store that cannot be written fails no request and loses no row, which reach the store once
it is fixed; the shutdown flush.

No timed assertions: every wait is a bounded poll of a condition (the store's parts, a metric).
"""
from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from test_serve_http import Server, served_model  # noqa: F401 - the module-scoped model fixture, reused

from sentimentops.steps.core.contract import LABELS
from sentimentops.steps.core.processes import wait_for
from sentimentops.steps.core.production import (
    CAPTURES,
    FEEDBACK,
    MIRROR_HEADER,
    REQUEST_ID_HEADER,
    Store,
    text_feedback_id,
)

pytestmark = pytest.mark.slow
RID = REQUEST_ID_HEADER.lower()
V1 = "/v1/models/sentiment:predict"
V2 = "/v2/models/sentiment/infer"
EXPLAIN = "/v1/models/sentiment:explain"
FAST_FLUSH = ("--capture-flush-rows", "4", "--capture-flush-s", "0.5", "--feedback-flush-rows", "1",
              "--feedback-flush-s", "0.5")


def start(model: Path, tmp: Path, store: Path, *flags: str) -> Server:
    srv = Server(model, tmp, "--production-store", str(store), *flags)
    assert srv.wait_ready(), srv.log.read_text()[-3000:]
    return srv


@pytest.fixture(scope="module")
def capturing(served_model, tmp_path_factory):  # noqa: F811 - the fixture imported above
    tmp = tmp_path_factory.mktemp("capture")
    srv = start(served_model, tmp, tmp / "store", "--capture-rate", "1.0", *FAST_FLUSH)
    srv.store = Store(str(tmp / "store"))  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def metric_value(srv: Server, series: str) -> float:
    """A labelled series' value (`name{a="x",b="y"}` exactly as exported), 0 when absent."""
    text = urllib.request.urlopen(srv.base + "/metrics", timeout=10).read().decode()
    match = re.search(rf"^{re.escape(series)} ([0-9.e+-]+)$", text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def post(srv: Server, path: str, body, rid: str | None = None, content_type: str = "application/json"):
    headers = {"Content-Type": content_type, **({REQUEST_ID_HEADER: rid} if rid is not None else {})}
    return srv.call(path, body, headers=headers)


def v2_body(texts: list[str], rid: str | None = None) -> dict:
    body: dict = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    if rid is not None:
        body["id"] = rid
    return body


def stored(store: Store, kind: str, ids: set[str]) -> list[dict] | None:
    """The store's rows of `kind` once every id in `ids` is there (None before: wait_for polls it)."""
    frame = store.read_parts(kind)
    return frame.to_dict(orient="records") if ids <= set(frame["id"]) else None


def test_every_predict_type_answer_carries_the_request_id(capturing):
    for n, (path, body) in enumerate(((V1, {"instances": ["a fine film"]}), ("/predict", {"instances": ["a fine film"]}),
                                      (EXPLAIN, {"instances": ["a fine film"]}), (V2, v2_body(["a fine film"])))):
        status, answer, headers = post(capturing, path, body)
        assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers[RID]), (path, headers)
        assert answer["id"] == headers[RID], path  # V2 without its own id gets the generated one
        client_id = f"client-7.a:c_d-{n}"  # one id per request: a reused id is replaced (the test below)
        status, answer, headers = post(capturing, path, body, rid=client_id)
        assert (status, headers[RID], answer["id"]) == (200, client_id, client_id), path
        assert post(capturing, path, body, rid="a/b")[2][RID] != "a/b"  # "/" is kept for instance ids
        status, answer, headers = post(capturing, path, body, rid="not sane: spaces")
        assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers[RID]) and answer["id"] == headers[RID]
        assert post(capturing, path, body, rid="x" * 129)[2][RID] != "x" * 129
    # V2: the body's own id wins, and the header says the same
    status, answer, headers = post(capturing, V2, v2_body(["good"], rid="v2-own"), rid="header-id")
    assert (status, answer["id"], headers[RID]) == (200, "v2-own", "v2-own")
    # errors of these routes carry it too: 400, 404, 413, 415
    for path in (V1, "/predict", EXPLAIN, V2):
        status, _, headers = post(capturing, path, b"{not json", rid="err-1")
        assert (status, headers[RID]) == (400, "err-1")
        status, _, headers = post(capturing, path, {"instances": ["x"]}, rid="err-2", content_type="text/plain")
        assert (status, headers[RID]) == (415, "err-2")
        status, _, headers = post(capturing, path, b'{"instances": ["' + b"a" * 1_100_000 + b'"]}', rid="err-3")
        assert (status, headers[RID]) == (413, "err-3")
    for path in ("/v1/models/other:predict", "/v2/models/other/infer", "/v1/models/other:explain"):
        status, _, headers = post(capturing, path, {"instances": ["x"]})
        assert status == 404 and re.fullmatch(r"[0-9a-f]{32}", headers[RID])


def test_captured_parts_hold_the_answers(capturing):
    answers = {}
    for i in range(3):
        texts = [f"review {i} was a delight", f"review {i} was dull and slow"]
        _, body, _ = post(capturing, V1, {"instances": texts}, rid=f"cap-{i}")
        for j, (text, p) in enumerate(zip(texts, body["predictions"], strict=True)):
            answers[f"cap-{i}/{j}"] = (text, p)
    _, body, _ = post(capturing, V2, v2_body(["one lone snippet"], rid="cap-v2"))
    answers["cap-v2"] = ("one lone snippet", {"probability": body["outputs"][1]["data"][0],
                                              "label": body["outputs"][0]["data"][0], "model_version": "5"})
    # A router's mirrored copy is answered but not captured (the client's request was, where it was answered);
    # sent before the last captured request, so a capture of it would be in the parts waited for.
    status, body, _ = capturing.call(V1, {"instances": ["a mirrored copy"]},
                                     headers={"Content-Type": "application/json", REQUEST_ID_HEADER: "cap-mirror",
                                              MIRROR_HEADER: "1"})
    assert status == 200 and body["predictions"]
    _, body, _ = post(capturing, "/predict", {"instances": ["plain route"]}, rid="cap-plain")
    answers["cap-plain"] = ("plain route", body["predictions"][0])
    post(capturing, EXPLAIN, {"instances": ["explanations are not traffic"]}, rid="cap-explain")
    found = wait_for(lambda: stored(capturing.store, CAPTURES, set(answers)), 60, "captured parts")
    rows = {r["id"]: r for r in found}
    for rid, (text, p) in answers.items():
        row = rows[rid]
        assert (row["text"], row["probability"], LABELS[row["label"]]) == (text, p["probability"], p["label"])
        assert (row["model_name"], row["model_version"]) == ("sentiment", "5")
    assert "cap-explain" not in rows and "cap-mirror" not in rows
    assert metric_value(capturing, "sentiment_captured_total") >= len(answers)
    assert metric_value(capturing, 'sentiment_capture_writes_total{outcome="ok"}') >= 1


def test_a_reused_client_id_never_labels_another_text(capturing):
    """Two V2 requests numbered "1" by their client: the body echoes the client's id (the protocol), but the second
    capture gets its own id in X-Request-Id, and feedback by each header id labels its own text."""
    ids = []
    for text in ("the first request numbered one", "the second request numbered one"):
        status, answer, headers = post(capturing, V2, v2_body([text], rid="1"))
        assert status == 200 and answer["id"] == "1"
        ids.append(headers[RID])
    assert ids[0] == "1" and ids[1] != "1" and ids[1].startswith("1.")
    for rid, label in zip(ids, ("positive", "negative"), strict=True):
        status, answer, _ = post(capturing, "/v1/feedback", {"id": rid, "label": label})
        assert (status, answer["status"], answer["label"]) == (200, "recorded", label), answer
    rows = wait_for(lambda: stored(capturing.store, FEEDBACK, set(ids)), 60, "both labels")
    texts = {r["id"]: r["text"] for r in rows}
    assert texts[ids[0]] == "the first request numbered one" and texts[ids[1]] == "the second request numbered one"


def test_feedback_status_table_and_metric(capturing):
    _, body, _ = post(capturing, V1, {"instances": ["a film to label"]}, rid="fb-1")
    predicted = body["predictions"][0]["label"]
    other = LABELS[1 - LABELS.index(predicted)]
    counted = 'sentiment_feedback_total{correct="true",model_version="5"}'
    before = metric_value(capturing, counted)

    status, answer, headers = post(capturing, "/v1/feedback", {"id": "fb-1", "label": predicted})
    assert status == 200 and answer == {"id": "fb-1", "label": predicted, "predicted": predicted, "correct": True,
                                        "model_version": "5", "status": "recorded"}
    assert RID in headers
    status, answer, _ = post(capturing, "/v1/feedback", {"id": "fb-1", "label": LABELS.index(predicted)})
    assert (status, answer["status"]) == (200, "duplicate")
    status, answer, _ = post(capturing, "/v1/feedback", {"id": "fb-1", "label": other})
    assert status == 409 and "first label stands" in answer["error"]
    assert metric_value(capturing, counted) == before + 1  # once per id, whatever was posted again

    text = "labelled without ever being captured"
    status, answer, _ = post(capturing, "/v1/feedback", {"text": text, "label": "neg"})
    assert status == 200 and answer["id"] == text_feedback_id(text) and answer["label"] == "negative"
    assert answer["status"] == "recorded" and answer["predicted"] in LABELS
    assert post(capturing, "/v1/feedback", {"text": text, "label": 0})[1]["status"] == "duplicate"
    assert post(capturing, "/v1/feedback", {"text": text, "label": 1})[0] == 409

    status, answer, _ = post(capturing, "/v1/feedback", {"id": "never-seen", "label": 1})
    assert status == 404 and "most recent" in answer["error"]
    for bad in ({"id": "fb-1", "label": "maybe"}, {"id": "fb-1", "label": True}, {"id": "fb-1"},
                {"id": "fb-1", "text": "both", "label": 1}, {"label": 1}, {"text": "   ", "label": 1},
                {"id": 5, "label": 1}, {"id": "fb-1", "label": 1, "extra": 1}, ["not", "an", "object"]):
        assert post(capturing, "/v1/feedback", bad)[0] == 400, bad
    assert post(capturing, "/v1/feedback", b"{broken")[0] == 400
    assert post(capturing, "/v1/feedback", {"id": "fb-1", "label": 1}, content_type="text/csv")[0] == 415
    assert post(capturing, "/v1/feedback", b'{"text": "' + b"a" * 1_100_000 + b'", "label": 1}')[0] == 413
    assert metric_value(capturing, 'sentiment_feedback_requests_total{status="500"}') == 0

    found = wait_for(lambda: stored(capturing.store, FEEDBACK, {"fb-1", text_feedback_id(text)}), 60,
                     "feedback parts")
    rows = {r["id"]: r for r in found}
    assert [r["id"] for r in found].count("fb-1") == 1  # the duplicate was not written again
    assert (rows["fb-1"]["origin"], rows["fb-1"]["text"], rows["fb-1"]["label"]) == (
        "api:id", "a film to label", LABELS.index(predicted))
    assert (rows[text_feedback_id(text)]["origin"], rows[text_feedback_id(text)]["label"]) == ("api:text", 0)


def test_storage_down_fails_no_request_and_loses_no_row(served_model, tmp_path):  # noqa: F811
    store_path = tmp_path / "store"
    store_path.write_text("a regular file where the store's folder should be")
    srv = start(served_model, tmp_path, store_path, "--capture-rate", "1.0", *FAST_FLUSH)
    try:
        ids = set()
        for i in range(6):
            status, _, _ = post(srv, V1, {"instances": [f"while storage is down {i}"]}, rid=f"down-{i}")
            assert status == 200
            ids.add(f"down-{i}")
        status, answer, _ = post(srv, "/v1/feedback", {"id": "down-0", "label": 1})
        assert (status, answer["status"]) == (200, "recorded")
        wait_for(lambda: metric_value(srv, 'sentiment_capture_writes_total{outcome="error"}') >= 1, 60,
                 "a failed capture write")
        wait_for(lambda: metric_value(srv, 'sentiment_feedback_writes_total{outcome="error"}') >= 1, 60,
                 "a failed feedback write")
        assert metric_value(srv, "sentiment_capture_buffered") == 6
        assert metric_value(srv, "sentiment_feedback_buffered") == 1
        assert post(srv, V1, {"instances": ["still answered"]}, rid="down-6")[0] == 200
        ids.add("down-6")
        store_path.unlink()  # storage is back
        store = Store(str(store_path))
        found = wait_for(lambda: stored(store, CAPTURES, ids), 60, "the kept captures")
        assert sorted(r["id"] for r in found) == sorted(ids)  # each once: nothing lost, nothing doubled
        labels = wait_for(lambda: stored(store, FEEDBACK, {"down-0"}), 60, "the kept label")
        assert [r["id"] for r in labels] == ["down-0"]
        assert metric_value(srv, 'sentiment_capture_dropped_total{reason="buffer_full"}') == 0
    finally:
        srv.stop()


def test_capture_off_text_feedback_only_and_the_shutdown_flush(served_model, tmp_path):  # noqa: F811
    srv = start(served_model, tmp_path, tmp_path / "store", "--feedback-flush-s", "3600", "--feedback-flush-rows",
                "1000")
    try:
        _, body, headers = post(srv, V1, {"instances": ["not captured"]}, rid="off-1")
        assert body["id"] == headers[RID] == "off-1"
        status, answer, _ = post(srv, "/v1/feedback", {"id": "off-1", "label": 1})
        assert status == 404 and "capture is off" in answer["error"]
        status, answer, _ = post(srv, "/v1/feedback", {"text": "a label without capture", "label": "positive"})
        assert (status, answer["status"]) == (200, "recorded")
        assert Store(str(tmp_path / "store")).parts(FEEDBACK) == []  # thresholds not reached yet
    finally:
        assert srv.stop() == 0
    store = Store(str(tmp_path / "store"))
    assert list(store.read_parts(FEEDBACK)["id"]) == [text_feedback_id("a label without capture")]
    assert store.parts(CAPTURES) == []  # capture off: no text was stored but the label given on purpose


def test_two_replicas_a_label_reaching_the_other_one_is_deferred_and_joined_at_ingest(served_model, tmp_path):  # noqa: F811
    # Two predictors behind one address share one store; a label by id usually reaches the replica that did not
    # capture it. With feedback_unknown_ids=defer that replica stores it without text (202) and ingest joins it to
    # the capture; reject (the default, as above) answers 404.
    import pandas as pd

    from sentimentops.steps.core.production import DEFERRED_ORIGIN
    from sentimentops.steps.ingest import IngestSettings, read_feedback, select_feedback

    store_path = tmp_path / "store"
    flags = ("--feedback-unknown-ids", "defer", *FAST_FLUSH)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a, b = start(served_model, tmp_path / "a", store_path, "--capture-rate", "1.0", *flags), None
    try:
        # b samples half its requests (seeded): a label for one it answered without capturing is refused there
        # (404: send the text), never deferred to an ingest that could not find it
        b = start(served_model, tmp_path / "b", store_path, "--capture-rate", "0.5", "--capture-seed", "3", *flags)
        statuses = []
        for i in range(12):
            post(b, V1, {"instances": [f"answered by b {i}"]}, rid=f"b-{i}")
            status, answer, _ = post(b, "/v1/feedback", {"id": f"b-{i}", "label": 1})
            statuses.append(status)
            assert status in (200, 404) and (status == 200 or "without capturing" in answer["error"]), answer
        assert set(statuses) == {200, 404}
        _, body, _ = post(a, V1, {"instances": ["captured by replica a"]}, rid="two-1")
        predicted = body["predictions"][0]["label"]
        status, answer, headers = post(b, "/v1/feedback", {"id": "two-1", "label": "positive"})
        assert status == 202 and RID in headers
        assert answer == {"id": "two-1", "label": "positive", "predicted": None, "correct": None,
                          "model_version": None, "status": "deferred"}
        assert post(b, "/v1/feedback", {"id": "two-1", "label": 1})[1]["status"] == "duplicate"
        assert post(b, "/v1/feedback", {"id": "two-1", "label": 0})[0] == 409
        assert post(b, "/v1/feedback", {"id": "captured-nowhere", "label": 0})[0] == 202
        # not the form of any capture id: refused, not stored
        for bad in ("has space", "two-1/x", "two-1/01", "two-1/\u00b2", "two-1/" + "9" * 5000, "a" * 129):
            assert post(b, "/v1/feedback", {"id": bad, "label": 0})[0] == 404, bad
        # b does not know the prediction: no correct/incorrect count for a deferred label
        assert metric_value(b, 'sentiment_feedback_total{correct="true",model_version="5"}') + \
            metric_value(b, 'sentiment_feedback_total{correct="false",model_version="5"}') == statuses.count(200)
        assert metric_value(b, 'sentiment_feedback_requests_total{status="202"}') == 2
        store = Store(str(store_path))
        recorded = {f"b-{i}" for i, status in enumerate(statuses) if status == 200}
        wait_for(lambda: stored(store, FEEDBACK, {"two-1", "captured-nowhere", *recorded}), 60, "the labels")
        wait_for(lambda: stored(store, CAPTURES, {"two-1"}), 60, "replica a's capture")
    finally:
        a.stop()
        if b is not None:
            b.stop()
    settings = IngestSettings(production_store=str(store_path), production_min_rows=1_000)
    feedback, captures = read_feedback(settings)
    assert set(feedback.loc[feedback["origin"] == DEFERRED_ORIGIN, "id"]) == {"two-1", "captured-nowhere"}
    assert captures is not None and "two-1" in set(captures["id"])
    empty = pd.DataFrame({"text": pd.Series(dtype=object)})
    chosen = select_feedback(feedback, settings, base_test=empty, base_train=empty, now=0.0, captures=captures)
    assert chosen.counts.dropped["unmatched_id"] == 1 and chosen.counts.dropped["ambiguous_id"] == 0
    assert sorted(zip(chosen.train["text"], chosen.train["label"], strict=True)) == sorted(
        [("captured by replica a", 1)] + [(f"answered by b {r.split('-')[1]}", 1) for r in recorded])
    assert predicted in LABELS
