"""ingest: seeded, stratified sampling; validation carved from train only; sources and their errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from sentimentops.steps.core.config import load_settings
from sentimentops.steps.ingest import (
    IngestSettings,
    make_splits,
    read_local,
    resolve_source,
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
    assert manifest["metrics"] == {"train_rows": 180.0, "validation_rows": 20.0, "test_rows": 50.0}
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
