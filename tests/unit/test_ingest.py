"""ingest: seeded, stratified sampling; validation carved from train only; sources and their errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from sentimentops.steps.core.config import load_settings
from sentimentops.steps.core.production import FEEDBACK, PROVENANCE_COLUMN, Store, feedback_frame
from sentimentops.steps.ingest import (
    IngestSettings,
    make_splits,
    read_local,
    resolve_source,
    select_feedback,
    stratified_sample,
)
from sentimentops.steps.ingest import main as ingest_main


def settings(**kw) -> IngestSettings:
    return load_settings(IngestSettings, kw)


def frame(n: int, positive_share: float = 0.5, prefix: str = "review") -> pd.DataFrame:
    pos = round(n * positive_share)
    return pd.DataFrame({"text": [f"{prefix} {i}" for i in range(n)], "label": [1] * pos + [0] * (n - pos)})


def test_stratified_sample_keeps_label_share_and_is_seeded():
    data = frame(1000, 0.3)
    a, b = stratified_sample(data, 100, 7), stratified_sample(data, 100, 7)
    assert len(a) == 100 and a["label"].sum() == 30
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(stratified_sample(data, 100, 8))


def test_splits_never_take_validation_from_test(home):
    raw = {"train": frame(400, prefix="train"), "test": frame(200, prefix="test")}
    splits = make_splits(raw, settings(sample_size=300, test_size=100, val_fraction=0.2))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (240, 60, 100)
    assert splits.train["text"].str.startswith("train").all()
    assert splits.validation["text"].str.startswith("train").all()
    assert splits.test["text"].str.startswith("test").all()
    assert not set(splits.train["text"]) & set(splits.validation["text"])
    assert splits.validation["label"].mean() == 0.5


def test_single_table_is_split_three_ways_without_overlap(home):
    splits = make_splits({"all": frame(500)}, settings(test_fraction=0.2, val_fraction=0.1))
    texts = [set(f["text"]) for _, f in splits.items()]
    assert sum(map(len, texts)) == 500
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_local_folder_keeps_its_train_test_split(tmp_path):
    frame(50).to_parquet(tmp_path / "train.parquet")
    frame(20, prefix="t").to_csv(tmp_path / "test.csv", index=False)
    raw = read_local(tmp_path)
    assert set(raw) == {"train", "test"} and len(raw["test"]) == 20


def test_jsonl_file_and_missing_columns(tmp_path):
    good = tmp_path / "reviews.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"r{i}", "label": i % 2, "extra": 1}) for i in range(10)))
    assert list(read_local(good)["all"].columns) == ["text", "label"]
    bad = tmp_path / "bad.csv"
    bad.write_text("review,stars\nfine,5\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text', 'label'\]"):
        read_local(bad)


def test_auto_falls_back_offline_in_the_local_profile(home, imdb_dir, caplog):
    raw, used, fallback = resolve_source(settings(source="auto", fallback_sources=["/nonexistent", str(imdb_dir)]))
    assert fallback and used == str(imdb_dir.resolve()) and len(raw["train"]) == 25_000
    assert "offline: the Hugging Face hub is unreachable" in caplog.text  # a log line (stderr), not a result


def test_demo_reviews_are_the_last_fallback(home):
    raw, used, fallback = resolve_source(settings(source="auto", fallback_sources=["/nonexistent", "demo"]))
    assert used == "demo" and fallback
    assert len(raw["all"]) == 400 and raw["all"]["label"].mean() == 0.5


def test_cli_writes_splits_and_manifest(home, imdb_dir, tmp_path):
    out = tmp_path / "ds"
    assert ingest_main(["--source", str(imdb_dir), "--sample-size", "200", "--test-size", "50", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {k: v for k, v in manifest["metrics"].items() if k.endswith("_rows") and not k.startswith("feedback")}
    assert rows == {"train_rows": 180.0, "validation_rows": 20.0, "test_rows": 50.0}
    assert manifest["metrics"]["feedback_read"] == 0  # the local store {home}/production does not exist yet
    assert not (out / "production.parquet").exists()
    first = (out / "train.parquet").read_bytes()
    assert ingest_main(["--source", str(imdb_dir), "--sample-size", "200", "--test-size", "50", "--out", str(out)]) == 0
    assert (out / "train.parquet").read_bytes() == first  # identical input -> identical bytes -> same DVC hash


# A source that cannot be read is a data error (steps/core/errors.py): exit 1, never retried; it was 2 before the
# stage exit table.
def test_cli_bad_source_exits_1_with_a_message(home, tmp_path, caplog):
    assert ingest_main(["--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such file or folder" in caplog.text and "Traceback" not in caplog.text


def test_cli_unreadable_file_exits_1(home, tmp_path, caplog):
    (tmp_path / "reviews.parquet").write_text("text,label\n")
    assert ingest_main(["--source", str(tmp_path / "reviews.parquet"), "--out", str(tmp_path / "o")]) == 1
    assert "not a readable .parquet file" in caplog.text


def test_gke_profile_refuses_fallback(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SENTIMENTOPS_PROFILE", "gke")
    monkeypatch.setenv("SENTIMENTOPS_HOME", str(tmp_path))
    assert ingest_main(["--source", "auto", "--out", str(tmp_path / "o")]) == 1
    assert "allows no fallback" in caplog.text


# ---- feedback from the production store (issue 15) ----------------------------------------------------------------
NOW = 1_800_000_000.0
DAY = 86400.0


def fb(rows: list[tuple]) -> pd.DataFrame:
    """Feedback rows (id, text, label, ts): the store's columns with the rest filled in."""
    return feedback_frame([{"id": i, "ts": ts, "text": t, "label": lab, "predicted": -1, "model_version": "1",
                            "origin": "api:id"} for i, t, lab, ts in rows])


def many(n: int, start: float = NOW - 10 * DAY, prefix: str = "fb") -> pd.DataFrame:
    return fb([(f"r{i}", f"{prefix} text {i}", i % 2, start + i) for i in range(n)])


def base_raw() -> dict[str, pd.DataFrame]:
    return {"train": frame(400, prefix="train"), "test": frame(100, prefix="test")}


def test_no_feedback_changes_nothing_but_the_provenance_column(home):
    s = settings(sample_size=200, val_fraction=0.2)
    plain = make_splits(base_raw(), s)
    empty = make_splits(base_raw(), s, fb([]), now=NOW)
    for (name, a), (_, b) in zip(plain.items(), empty.items(), strict=True):
        assert (a[PROVENANCE_COLUMN] == "base").all(), name
        pd.testing.assert_frame_equal(a, b)
    assert empty.production is None and empty.feedback is not None and empty.feedback.read == 0


def test_feedback_joins_train_and_validation_never_test_with_provenance(home):
    s = settings(sample_size=200, val_fraction=0.2, production_fraction=0.2, production_min_rows=10)
    splits = make_splits(base_raw(), s, many(100), now=NOW)
    assert (splits.test[PROVENANCE_COLUMN] == "base").all() and splits.test["text"].str.startswith("test").all()
    assert splits.production is not None and len(splits.production) == 20
    learn = pd.concat([splits.train, splits.validation])
    assert (learn[PROVENANCE_COLUMN] == "feedback").sum() == 80
    assert set(learn.loc[learn[PROVENANCE_COLUMN] == "feedback", "text"]).isdisjoint(splits.production["text"])
    # the production slice is the most recent 20% (ts order), whatever the seed
    assert sorted(splits.production["text"]) == sorted(f"fb text {i}" for i in range(80, 100))
    other = make_splits(base_raw(), s.model_copy(update={"seed": 7}), many(100), now=NOW)
    assert other.production is not None and sorted(other.production["text"]) == sorted(splits.production["text"])
    again = make_splits(base_raw(), s, many(100), now=NOW)
    pd.testing.assert_frame_equal(again.train, splits.train)
    assert splits.feedback.metrics()["feedback_train_rows"] == 80


def test_dedup_by_id_then_text_and_base_texts_dropped():
    rows = fb([
        ("a", "same id", 1, NOW - 5), ("a", "same id, relabelled", 0, NOW - 1),  # first label per id wins
        ("b", "twice  said", 0, NOW - 4), ("c", "twice said", 1, NOW - 3),      # same normalised text: newest
        ("d", "test 3", 1, NOW - 2),                                             # a base test text: never train
        ("e", " train 5 ", 0, NOW - 2),                                          # a base train text
        ("f", "", 1, NOW - 2), ("g", "fine", 7, NOW - 2),                        # no text, bad label
    ])
    chosen = select_feedback(rows, settings(production_min_rows=50), base_test=frame(10, prefix="test"),
                             base_train=frame(10, prefix="train"), now=NOW)
    assert chosen.counts.dropped == {"unmatched_id": 0, "ambiguous_id": 0, "duplicate_id": 1, "invalid": 2, "outside_window": 0, "duplicate_text": 1,
                                     "in_base_test": 1, "in_base_train": 1, "over_cap": 0}
    assert sorted(zip(chosen.train["text"], chosen.train["label"], strict=True)) == [("same id", 1),
                                                                                     ("twice said", 1)]
    assert len(chosen.production) == 0 and chosen.counts.kept == 2 and chosen.counts.read == 8


def test_deferred_labels_take_their_capture_s_text_or_are_dropped_as_unmatched_or_ambiguous():
    from sentimentops.steps.core.production import DEFERRED_ORIGIN, capture_frame, resolve_deferred

    def capture(i: str, ts: float, text: str, label: int, version: str) -> dict:
        return {"id": i, "ts": ts, "text": text, "probability": 0.5, "label": label, "model_name": "sentiment",
                "model_version": version}

    def deferred(rows: list[tuple[str, int, float]]) -> pd.DataFrame:
        return feedback_frame([{"id": i, "ts": ts, "text": None, "label": lab, "predicted": -1, "model_version": "",
                                "origin": DEFERRED_ORIGIN} for i, lab, ts in rows])

    captures = capture_frame([
        capture("req-7/0", NOW - 20, "first of two", 1, "3"), capture("req-7/1", NOW - 20, "second of two", 1, "3"),
        capture("req-8", NOW - 19, "  spaced   out ", 0, "4"),
        # V2's default id "1", captured by two replicas for two texts: a label for "1" cannot be placed
        capture("1", NOW - 30, "one text", 1, "3"), capture("1", NOW - 18, "another text", 0, "3"),
        # the same text captured twice under one id (a retried request): one text, no ambiguity
        capture("retried", NOW - 17, "said twice", 1, "4"), capture("retried", NOW - 16, "said  twice", 1, "4")])
    rows = fb([("direct", "labelled where captured", 1, NOW - 9)])
    merged = pd.concat([rows, deferred([("req-7/1", 0, NOW - 5), ("gone", 1, NOW - 4), ("req-8", 1, NOW - 3),
                                        ("1", 1, NOW - 2), ("retried", 0, NOW - 1)])], ignore_index=True)
    resolved = resolve_deferred(merged, captures)
    assert (resolved.unmatched, resolved.ambiguous) == (1, 1)
    assert list(resolved.feedback["id"]) == ["direct", "req-7/1", "req-8", "retried"]  # order kept
    assert resolved.feedback.dtypes.to_dict() == merged.dtypes.to_dict()
    by_id = resolved.feedback.set_index("id")
    assert tuple(by_id.loc["req-7/1", ["text", "predicted", "model_version"]]) == ("second of two", 1, "3")
    assert tuple(by_id.loc["req-8", ["predicted", "label"]]) == (0, 1)  # the capture's answer, the person's label
    assert by_id.loc["retried", "text"] == "said  twice"
    assert resolve_deferred(rows, captures).feedback is rows  # nothing deferred: the same frame

    chosen = select_feedback(merged, settings(production_min_rows=50), base_test=frame(5, prefix="test"),
                             base_train=frame(5, prefix="train"), now=NOW, captures=captures)
    assert {k: v for k, v in chosen.counts.dropped.items() if v} == {"unmatched_id": 1, "ambiguous_id": 1}
    assert sorted(chosen.train["text"]) == ["  spaced   out ", "labelled where captured", "said  twice",
                                            "second of two"]
    # without captures (none read) every deferred label is unmatched, never "invalid"
    chosen = select_feedback(merged, settings(production_min_rows=50), base_test=frame(5, prefix="test"),
                             base_train=frame(5, prefix="train"), now=NOW)
    assert chosen.counts.dropped["unmatched_id"] == 5 and chosen.counts.dropped["invalid"] == 0
    assert list(chosen.train["text"]) == ["labelled where captured"]


def test_an_unmatched_deferred_label_never_hides_a_label_with_text_for_the_same_id():
    # the replica that captured "req-9" also got a label for it (with its text) after another replica had deferred
    # one; the capture has since expired: the deferred row goes first, the label with text stays
    from sentimentops.steps.core.production import DEFERRED_ORIGIN, capture_frame

    rows = pd.concat([
        feedback_frame([{"id": "req-9", "ts": NOW - 10, "text": None, "label": 1, "predicted": -1,
                         "model_version": "", "origin": DEFERRED_ORIGIN}]),
        fb([("req-9", "the captured text", 1, NOW - 5)])], ignore_index=True)
    chosen = select_feedback(rows, settings(production_min_rows=50), base_test=frame(5, prefix="test"),
                             base_train=frame(5, prefix="train"), now=NOW, captures=capture_frame([]))
    assert chosen.counts.dropped["unmatched_id"] == 1 and chosen.counts.dropped["duplicate_id"] == 0
    assert list(chosen.train["text"]) == ["the captured text"]


def test_window_and_cap_keep_the_most_recent():
    rows = many(100, start=NOW - 100 * DAY)  # row i labelled at NOW - 100 days + i seconds ... then spread below
    rows["ts"] = [NOW - (100 - i) * DAY for i in range(100)]  # row i is 100 - i days old
    s = settings(feedback_window_days=30, feedback_max_rows=20, production_fraction=0.25, production_min_rows=5)
    chosen = select_feedback(rows, s, base_test=frame(5, prefix="test"), base_train=frame(5, prefix="train"),
                             now=NOW)
    assert chosen.counts.dropped["outside_window"] == 70 and chosen.counts.dropped["over_cap"] == 10
    kept = sorted(int(t.split()[-1]) for t in [*chosen.train["text"], *chosen.production["text"]])
    assert kept == list(range(80, 100))
    assert sorted(int(t.split()[-1]) for t in chosen.production["text"]) == list(range(95, 100))


def test_no_production_slice_below_its_minimum():
    s = settings(production_fraction=0.2, production_min_rows=50)
    chosen = select_feedback(many(200), s, base_test=frame(5), base_train=frame(5, prefix="t"), now=NOW)
    assert len(chosen.production) == 0 and len(chosen.train) == 200


def test_cli_merges_the_store_writes_the_slice_and_counts(home, imdb_dir, tmp_path, monkeypatch):
    store = tmp_path / "store"
    texts = [f"a production review number {i} about a film" for i in range(300)]
    Store(str(store)).write_part(FEEDBACK, fb([(f"id{i}", t, i % 2, 1000.0 + i) for i, t in enumerate(texts)]))
    monkeypatch.setenv("SENTIMENTOPS_PRODUCTION_STORE", str(store))
    out = tmp_path / "ds"
    argv = ["--source", str(imdb_dir), "--sample-size", "200", "--test-size", "50", "--out", str(out)]
    assert ingest_main(argv) == 0
    production = pd.read_parquet(out / "production.parquet")
    assert len(production) == 60 and (production["provenance"] == "feedback").all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["production"] == "production.parquet"
    assert manifest["metrics"]["feedback_read"] == 300 and manifest["metrics"]["feedback_train_rows"] == 240
    assert manifest["metrics"]["production_rows"] == 60
    assert manifest["metrics"]["feedback_dropped_duplicate_id"] == 0
    # merging off (or an empty store setting): the slice of the earlier run is gone, no feedback counted
    assert ingest_main([*argv, "--no-feedback"]) == 0
    assert not (out / "production.parquet").exists()
    assert "feedback_read" not in json.loads((out / "manifest.json").read_text())["metrics"]
    assert ingest_main([*argv, "--production-store", ""]) == 0 and not (out / "production.parquet").exists()
    assert "feedback_read" not in json.loads((out / "manifest.json").read_text())["metrics"]


def test_cli_unreadable_feedback_exits_1(home, imdb_dir, tmp_path, monkeypatch, caplog):
    (tmp_path / "store" / "feedback").mkdir(parents=True)
    (tmp_path / "store" / "feedback" / "part-x.parquet").write_text("not parquet")
    monkeypatch.setenv("SENTIMENTOPS_PRODUCTION_STORE", str(tmp_path / "store"))
    assert ingest_main(["--source", str(imdb_dir), "--out", str(tmp_path / "o")]) == 1
    assert "feedback cannot be read" in caplog.text and "Traceback" not in caplog.text
