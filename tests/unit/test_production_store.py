"""steps/core/production.py: labels as people write them, request and feedback ids, and the store's parts on a
local folder and on GCS (the real `gcp-storage-emulator` process, through google-cloud-storage with
STORAGE_EMULATOR_HOST, as in the cluster but anonymous)."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from sentimentops.steps.core.production import (
    CAPTURE_COLUMNS,
    CAPTURES,
    FEEDBACK,
    FEEDBACK_COLUMNS,
    Store,
    capture_frame,
    feedback_frame,
    instance_id,
    latest_feedback,
    parse_label,
    sane_request_id,
    text_feedback_id,
)

EMULATOR = str(Path(sys.executable).with_name("gcp-storage-emulator"))


@pytest.mark.parametrize(("given", "class_id"), [
    (0, 0), (1, 1), (1.0, 1), ("0", 0), ("1", 1), ("negative", 0), ("Positive", 1), (" POS ", 1), ("neg", 0)])
def test_labels_people_write(given, class_id):
    assert parse_label(given) == class_id


@pytest.mark.parametrize("given", [True, False, 2, -1, 0.5, "", "maybe", "2", None, [1], float("nan")])
def test_labels_refused_with_the_accepted_forms(given):
    with pytest.raises(ValueError, match="expected one of negative, positive or 0/1"):
        parse_label(given)


def test_request_and_feedback_ids():
    assert sane_request_id("req-1.a:b-c_D") and sane_request_id("x" * 128)
    assert not sane_request_id("req/1")  # "/" belongs to instance ids (<id>/<i>) only
    for bad in ("", "x" * 129, "a b", "new\nline", "é", None, 5):
        assert not sane_request_id(bad)
    assert instance_id("r", 0, 1) == "r" and instance_id("r", 2, 3) == "r/2"
    one = text_feedback_id("A fine film.")
    assert one == text_feedback_id("A fine film.") != text_feedback_id("A fine film")
    assert sane_request_id(one) and one.startswith("text:")


def feedback_rows(ids, label=1, ts=1.0):
    return [{"id": i, "ts": ts, "text": f"text {i}", "label": label, "predicted": -1, "model_version": "",
             "origin": "test"} for i in ids]


def check_store(store: Store):
    assert store.parts(FEEDBACK) == [] and list(store.read_parts(FEEDBACK).columns) == list(FEEDBACK_COLUMNS)
    first = store.write_part(FEEDBACK, feedback_frame(feedback_rows(["a", "b"])), now=1_000_000)
    second = store.write_part(FEEDBACK, feedback_frame(feedback_rows(["b", "c"], label=0, ts=2.0)), now=2_000_000)
    assert store.parts(FEEDBACK) == [first, second]  # oldest first: the names sort by time
    frame = store.read_parts(FEEDBACK)
    assert list(frame["id"]) == ["a", "b", "b", "c"] and frame["label"].dtype == "int64"
    kept = latest_feedback(frame)
    assert list(kept["id"]) == ["a", "b", "c"] and list(kept["label"]) == [1, 1, 0]  # the first label stands
    captured = store.write_part(CAPTURES, capture_frame([{"id": "r/0", "ts": 3.0, "text": "t", "probability": 0.7,
                                                          "label": 1, "model_name": "m", "model_version": "2"}]))
    assert store.parts(CAPTURES) == [captured]
    assert list(store.read_parts(CAPTURES).columns) == list(CAPTURE_COLUMNS)
    assert len(store.read_parts(FEEDBACK)) == 4  # kinds do not mix


def test_local_store(tmp_path):
    store = Store(str(tmp_path / "production"))
    check_store(store)
    names = sorted(p.name for p in (tmp_path / "production" / FEEDBACK).iterdir())
    assert len(names) == 2 and all(n.startswith("part-") and n.endswith(".parquet") for n in names)  # no tmp left
    with pytest.raises(ValueError, match="unknown kind"):
        store.parts("other")


def test_an_unwritable_local_store_raises_and_leaves_nothing(tmp_path):
    (tmp_path / "production").write_text("a file where the folder should be")
    store = Store(str(tmp_path / "production"))
    with pytest.raises(OSError):
        store.write_part(FEEDBACK, feedback_frame(feedback_rows(["a"])))
    assert store.parts(FEEDBACK) == []




def test_gcs_store_on_the_emulator(gcs):
    store = Store(f"{gcs}/sentimentops/production")
    check_store(store)
    assert all(p.startswith(f"{gcs}/sentimentops/production/feedback/part-") for p in store.parts(FEEDBACK))
    # another prefix in the same bucket is another store
    assert Store(f"{gcs}/other").parts(FEEDBACK) == []
    assert isinstance(Store(gcs).read_parts(CAPTURES), pd.DataFrame)
