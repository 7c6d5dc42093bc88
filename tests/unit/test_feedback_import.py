"""`sentimentops feedback import FILE` (steps/feedback/cli.py): CSV, JSON lines and parquet; all or nothing by
default, --skip-invalid with a rejects file, ids from the text when the file has none, an idempotent re-import."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sentimentops.steps.core.production import FEEDBACK, Store, text_feedback_id
from sentimentops.steps.feedback.cli import main

CLI = str(Path(sys.executable).with_name("sentimentops"))
GOOD = [{"text": "A warm, funny film.", "label": "positive"}, {"text": "Dull from start to end.", "label": 0},
        {"text": "Loved every minute", "label": "1"}]


def write(path: Path, rows: list[dict]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:  # a parquet column has one type: mixed labels ("positive", 0) are written as strings
        mixed = frame["label"].map(type).nunique() > 1
        (frame.astype({"label": str}) if mixed else frame).to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_good_file_is_one_part_and_a_reimport_writes_nothing(tmp_path, home, capsys, suffix):
    source = write(tmp_path / f"labels{suffix}", GOOD)
    store = tmp_path / "store"
    assert main(["import", str(source), "--store", str(store)]) == 0
    assert "3 rows, 3 written" in capsys.readouterr().out
    parts = Store(str(store)).parts(FEEDBACK)
    frame = Store(str(store)).read_parts(FEEDBACK)
    assert len(parts) == 1 and list(frame["label"]) == [1, 0, 1]
    assert list(frame["id"]) == [text_feedback_id(r["text"]) for r in GOOD]
    assert set(frame["origin"]) == {f"import:{source.name}"} and set(frame["predicted"]) == {-1}
    assert set(frame["model_version"]) == {""}
    assert main(["import", str(source), "--store", str(store)]) == 0  # the same file again
    assert "0 written, 3 already in the store" in capsys.readouterr().out
    assert Store(str(store)).parts(FEEDBACK) == parts


def test_the_default_store_is_the_production_store_setting(tmp_path, home):
    source = write(tmp_path / "labels.parquet", [{"text": f"review {i}", "label": i % 2} for i in range(4)])
    assert pd.read_parquet(source)["label"].dtype == "int64"  # numpy integers, as labelling tools export them
    assert main(["import", str(source)]) == 0
    assert list(Store(str(home / "production")).read_parts(FEEDBACK)["label"]) == [0, 1, 0, 1]


BAD = [*GOOD, {"text": "", "label": 1}, {"text": "Fine", "label": "maybe"}, {"text": "Odd", "label": 2},
       {"text": "   ", "label": "neg"}]


def test_any_bad_row_and_nothing_is_written(tmp_path, home, caplog):
    source = write(tmp_path / "labels.csv", BAD)
    store = tmp_path / "store"
    assert main(["import", str(source), "--store", str(store)]) == 1
    message = caplog.text
    assert "4 of 7 rows invalid, nothing written" in message
    for row, why in ((4, "non-empty text"), (5, "'maybe'"), (6, "label '2'"), (7, "non-empty text")):
        assert f"row {row}: " in message and why in message
    assert Store(str(store)).parts(FEEDBACK) == []


def test_the_report_names_the_first_20_rows_and_counts_the_rest(tmp_path, home, caplog):
    source = write(tmp_path / "many.jsonl", [{"text": f"t{i}", "label": "x"} for i in range(25)])
    assert main(["import", str(source), "--store", str(tmp_path / "store")]) == 1
    assert "row 20:" in caplog.text and "row 21:" not in caplog.text and "(and 5 more)" in caplog.text


def test_skip_invalid_writes_the_good_rows_and_the_rejects_with_reasons(tmp_path, home, capsys):
    source = write(tmp_path / "labels.jsonl", BAD)
    with source.open("a") as out:
        out.write("{not json\n")
    store = tmp_path / "store"
    assert main(["import", str(source), "--store", str(store), "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "3 written" in out and "5 rejected" in out
    assert len(Store(str(store)).read_parts(FEEDBACK)) == 3
    rejected = [json.loads(line) for line in (tmp_path / "labels.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejected] == [4, 5, 6, 7, 8]
    assert rejected[1]["label"] == "maybe" and "expected one of" in rejected[1]["reason"]
    assert "not valid JSON" in rejected[4]["reason"]
    named = tmp_path / "out" / "rejects.jsonl"
    assert main(["import", str(source), "--store", str(store), "--skip-invalid", "--rejects", str(named)]) == 0
    assert len(named.read_text().splitlines()) == 5


def test_ids_renamed_columns_and_conflicts_inside_the_file(tmp_path, home, caplog):
    rows = [{"review": "great", "sentiment": "pos", "request": "req-1/0"},
            {"review": "great", "sentiment": "pos", "request": "req-1/0"},  # repeated: counted, written once
            {"review": "awful", "sentiment": "neg", "request": ""}]
    source = write(tmp_path / "tool.csv", rows)
    store = tmp_path / "store"
    flags = ["--text-column", "review", "--label-column", "sentiment", "--id-column", "request"]
    assert main(["import", str(source), "--store", str(store), *flags]) == 0
    frame = Store(str(store)).read_parts(FEEDBACK)
    assert list(frame["id"]) == ["req-1/0", text_feedback_id("awful")]
    conflict = write(tmp_path / "conflict.csv", [*rows, {"review": "great", "sentiment": "neg", "request": "req-1/0"}])
    assert main(["import", str(conflict), "--store", str(store), *flags]) == 1
    assert "row 4: id 'req-1/0' has label 0 here and 1 on row 1" in caplog.text
    assert main(["import", str(source), "--store", str(store)]) == 1  # default column names: not there
    assert "no column(s) ['text', 'label']" in caplog.text


def test_the_command_line_exit_statuses(tmp_path, home):
    bad = write(tmp_path / "bad.csv", BAD)
    done = subprocess.run([CLI, "feedback", "import", str(bad), "--store", str(tmp_path / "store")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "nothing written" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    unknown = tmp_path / "labels.txt"
    unknown.write_text("x")
    assert main(["import", str(unknown), "--store", str(tmp_path / "store")]) == 2
    assert main(["import", str(tmp_path / "missing.csv"), "--store", str(tmp_path / "store")]) == 1


def test_a_json_array_export_imports_and_invalid_utf8_is_refused(tmp_path):
    """What labelling tools export: a JSON array of objects. Invalid UTF-8 is refused whole (the API refuses it too),
    never stored with replacement characters."""
    from sentimentops.steps.core.production import FEEDBACK, Store
    from sentimentops.steps.feedback.cli import main

    export = tmp_path / "labels.json"
    export.write_text(json.dumps([{"text": "a fine film", "label": "positive"}, {"text": "dull", "label": 0}]))
    store = tmp_path / "store"
    assert main(["import", str(export), "--store", str(store)]) == 0
    assert sorted(Store(str(store)).read_parts(FEEDBACK)["text"]) == ["a fine film", "dull"]
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"text": "caf\xe9", "label": 1}\n')
    assert main(["import", str(broken), "--store", str(tmp_path / "other")]) == 1
    assert not Store(str(tmp_path / "other")).parts(FEEDBACK)


def test_an_id_with_only_a_deferred_label_is_imported_with_its_text(tmp_path, home, capsys):
    # A replica that had not captured "req-5" deferred its label (no text); the labelling tool exports the same id
    # with the text: the import stores it, so the label trains even if the capture never turns up.
    from sentimentops.steps.core.production import DEFERRED_ORIGIN, feedback_frame

    store = Store(str(tmp_path / "store"))
    store.write_part(FEEDBACK, feedback_frame([{"id": "req-5", "ts": 1.0, "text": None, "label": 1, "predicted": -1,
                                                "model_version": "", "origin": DEFERRED_ORIGIN}]))
    source = write(tmp_path / "tool.csv", [{"text": "the text behind req-5", "label": "pos", "id": "req-5"}])
    assert main(["import", str(source), "--store", str(store)]) == 0
    assert "1 written" in capsys.readouterr().out
    frame = store.read_parts(FEEDBACK)
    assert sorted(frame["origin"]) == sorted([DEFERRED_ORIGIN, "import:tool.csv"])
    assert main(["import", str(source), "--store", str(store)]) == 0  # now it is stored: nothing again
    assert "0 written, 1 already in the store" in capsys.readouterr().out
