"""Data tests for the validate stage: each expectation rejects a crafted bad frame; real IMDB samples pass."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from sentimentops.steps.validate.checks import ValidateSettings, ValidationResult, validate_dataset
from sentimentops.steps.validate.cli import main

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

N = 40  # rows per crafted split: enough for 2.5%-granular shares, small enough to stay fast


def good(n: int = N, prefix: str = "review") -> pd.DataFrame:
    """Distinct, balanced, plausible reviews; `prefix` keeps splits disjoint (no leakage)."""
    return pd.DataFrame({
        "text": [f"{prefix} {i}: the film was {'great' if i % 2 else 'dull'} and the cast did fine work"
                 for i in range(n)],
        "label": pd.Series([i % 2 for i in range(n)], dtype="int64"),
        "extra": range(n),  # extra columns are allowed by the contract
    })


def settings(**overrides) -> ValidateSettings:
    base = {"splits": ["train"], "overlap_pairs": [], "min_rows": 10}
    return ValidateSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def run():
    """validate_dataset on one `train` frame; the GX import (~2.7 s) happens once per module."""
    def _run(frame: pd.DataFrame, **overrides) -> ValidationResult:
        return validate_dataset({"train": frame}, settings(**overrides))
    return _run


def failed(result: ValidationResult) -> set[str]:
    return {o.name for o in result.failures}


def test_good_frame_passes_every_expectation(run):
    result = run(good())
    assert result.success, [o.message for o in result.failures]
    assert len(result.outcomes) == 13 and result.rows == {"train": N}
    assert {o.engine for o in result.outcomes} == {"great_expectations"}


def with_text(index: int, value) -> pd.DataFrame:
    frame = good()
    frame["text"] = frame["text"].astype(object)
    frame.loc[index, "text"] = value
    return frame


@pytest.mark.parametrize(("frame", "expected_failures"), [
    pytest.param(with_text(3, None), {"text_not_null"}, id="null text"),
    pytest.param(with_text(3, "   \n\t"), {"text_not_blank"}, id="whitespace-only text"),
    pytest.param(with_text(3, ""), {"text_not_blank", "text_length"}, id="empty text"),
    pytest.param(with_text(3, 12345), {"text_type"}, id="number in text"),
    pytest.param(with_text(3, "x" * 100_001), {"text_length"}, id="text over 100k characters"),
])
def test_bad_text_is_rejected(run, frame, expected_failures):
    assert failed(run(frame)) == expected_failures


def test_text_length_bounds_are_configurable(run):
    assert failed(run(good(), text_length_min=70)) == {"text_length"}
    assert failed(run(good(), text_length_max=10)) == {"text_length"}


def test_mean_and_median_length_bounds(run):
    short = pd.DataFrame({"text": [f"ok {i}" for i in range(N)], "label": [i % 2 for i in range(N)]})
    assert failed(run(short)) == {"text_length_mean", "text_length_median"}
    # One 90k-character text drags the mean over 2,000 but leaves the median alone.
    outlier = with_text(0, "y" * 90_000)
    assert failed(run(outlier, typical_length_max=2000)) == {"text_length_mean"}


def test_third_label_is_rejected(run):
    frame = good()
    frame.loc[0, "label"] = 2
    result = run(frame)
    assert failed(result) == {"label_in_set"}
    outcome = next(o for o in result.failures)
    assert outcome.observed == 1 and "2" in outcome.message


def test_null_label_is_rejected(run):
    frame = good()
    frame["label"] = frame["label"].astype("float64")
    frame.loc[0, "label"] = None
    # A NaN also turns the dtype to float64: both the null and the type expectation catch it.
    assert failed(run(frame)) == {"label_not_null", "label_type"}


def test_string_labels_are_rejected(run):
    frame = good()
    frame["label"] = frame["label"].map({0: "neg", 1: "pos"})
    assert {"label_type", "label_in_set", "label_balance"} <= failed(run(frame))


def test_ninety_ten_split_fails_label_balance(run):
    frame = good()
    frame["label"] = [0 if i < N // 10 else 1 for i in range(N)]  # 10% negative
    result = run(frame)
    assert failed(result) == {"label_balance"}
    assert result.failures[0].observed == pytest.approx(0.9)


def test_heavy_duplicates_fail_and_whitespace_variants_count(run):
    frame = good()
    frame.loc[:9, "text"] = "the same review"  # 10 identical rows -> 9 duplicates of 40 = 22.5%
    result = run(frame)
    assert failed(result) == {"duplicate_share"}
    assert result.failures[0].observed == pytest.approx(9 / N)
    # IMDB-like 1 duplicate in 40 (2.5%) fails the 2% default; a spacing variant is still a duplicate.
    frame = good()
    frame.loc[1, "text"] = "  " + frame.loc[0, "text"].replace(" ", "  \n") + " "
    assert failed(run(frame)) == {"duplicate_share"}
    assert not failed(run(frame, max_duplicate_share=0.05))


def test_too_few_rows(run):
    assert failed(run(good(5))) == {"row_count"}


def test_missing_column_fails_without_raising(run):
    result = run(good().drop(columns="label"))
    assert {"columns_present", "label_type", "label_not_null", "label_in_set", "label_balance"} == failed(result)
    assert all("not evaluated" in o.message for o in result.failures if o.name != "columns_present")


def test_overlap_between_train_and_test():
    train, test = good(prefix="train"), good(prefix="test")
    # 2 of 40 test texts (5%) appear in train, one with different spacing: leakage above the 1% bound.
    test.loc[0, "text"] = train.loc[5, "text"]
    test.loc[1, "text"] = "\t" + train.loc[6, "text"].replace(" ", "   ") + "\n"
    frames = {"train": train, "validation": good(prefix="val"), "test": test}
    result = validate_dataset(frames, ValidateSettings(min_rows=10))
    assert [(o.name, o.split) for o in result.failures] == [("overlap_share", "train/test")]
    assert result.failures[0].observed == pytest.approx(2 / N) and result.failures[0].engine == "pandas"
    assert validate_dataset(frames, ValidateSettings(min_rows=10, max_overlap_share=0.1)).success


def test_missing_split_is_a_programming_error():
    with pytest.raises(ValueError, match="validation"):
        validate_dataset({"train": good(), "test": good()}, ValidateSettings())


def test_inconsistent_settings_are_rejected():
    with pytest.raises(ValueError):
        ValidateSettings(label_mean_min=0.7, label_mean_max=0.6)
    with pytest.raises(ValueError, match="overlap_pairs"):
        ValidateSettings(splits=["train"], overlap_pairs=[("train", "test")])


def test_real_imdb_samples_pass(imdb_dir):
    train, test = (pd.read_parquet(imdb_dir / f"sample_{split}.parquet") for split in ("train", "test"))
    result = validate_dataset({"train": train, "test": test},
                              ValidateSettings(splits=["train", "test"], overlap_pairs=[("train", "test")]))
    assert result.success, [o.message for o in result.failures]
    assert result.rows == {"train": len(train), "test": len(test)}


def write_dataset(folder: Path, frames: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        frame.to_parquet(folder / f"{split}.parquet")
    return folder


def good_dataset(folder: Path) -> Path:
    return write_dataset(folder, {s: good(prefix=s) for s in ("train", "validation", "test")})


def test_cli_good_dataset_exits_0_and_writes_every_file(tmp_path, caplog):
    out = tmp_path / "out"
    assert main(["--dataset", str(good_dataset(tmp_path / "ds")), "--out", str(out), "--min-rows", "10"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "report.html", "report.json", "report.md"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["step"] == "validate" and manifest["inputs"]["dataset"].startswith("sha256:")
    assert manifest["metrics"]["failed_expectations"] == 0 and manifest["metrics"]["rows"] == 3 * N
    assert manifest["params"]["min_rows"] == 10
    assert json.loads((out / "report.json").read_text())["success"] is True
    assert "passed" in caplog.text
    # No reuse check of its own (the local runner decides reuse): a re-run validates again, to the same bytes.
    report = (out / "report.json").read_bytes()
    assert main(["--dataset", str(tmp_path / "ds"), "--out", str(out), "--min-rows", "10"]) == 0
    assert (out / "report.json").read_bytes() == report


def test_cli_bad_dataset_exits_1_with_readable_summary(tmp_path, caplog):
    dataset = good_dataset(tmp_path / "ds")
    train = good(prefix="train")
    train["label"] = [0 if i < N // 10 else 1 for i in range(N)]
    write_dataset(dataset, {"train": train})
    out = tmp_path / "out"
    assert main(["--dataset", str(dataset), "--out", str(out), "--min-rows", "10"]) == 1
    assert "[train] label_balance: observed 0.9" in caplog.text
    assert not any(r.exc_info for r in caplog.records)  # a verdict, not a crash: no traceback
    assert {"report.md", "report.html", "report.json", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "manifest.json").read_text())["metrics"]["failed_expectations"] == 1


def test_cli_help_lists_the_threshold_flags(capsys):
    # Regression: a "%" in a Field description (e.g. "0.4%") crashed argparse's help formatting.
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--max-duplicate-share" in capsys.readouterr().out


@pytest.mark.parametrize("breakage", ["no folder", "no test file", "no label column", "not parquet"])
# Unusable input is a data error (steps/core/errors.py): exit 1 with one line and nothing written; it was 2 before
# the stage exit table (2 is now only a bad flag, setting or profile key).
def test_cli_unusable_input_exits_1(tmp_path, caplog, breakage):
    dataset = tmp_path / "ds"
    if breakage != "no folder":
        good_dataset(dataset)
    if breakage == "no test file":
        (dataset / "test.parquet").unlink()
    if breakage == "no label column":
        write_dataset(dataset, {"test": good().drop(columns="label")})
    if breakage == "not parquet":
        (dataset / "test.parquet").write_text("text,label\n")
    assert main(["--dataset", str(dataset), "--out", str(tmp_path / "out")]) == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].getMessage().startswith("validate: data error:")
    assert len(errors[0].getMessage().splitlines()) == 1 and errors[0].exc_info is None
    assert not (tmp_path / "out" / "manifest.json").exists()


# ---- production feedback: provenance and the no-leak rule (issue 15) ------------------------------------------------
def merged(n: int = N) -> dict[str, pd.DataFrame]:
    """An ingest output with feedback: base + feedback rows in train/validation, a base test, a production slice."""
    def split(prefix: str, provenance: list[str]) -> pd.DataFrame:
        return good(len(provenance), prefix).drop(columns="extra").assign(provenance=provenance)

    return {"train": split("train", ["base"] * (n - 10) + ["feedback"] * 10),
            "validation": split("val", ["base"] * (n - 4) + ["feedback"] * 4),
            "test": split("test", ["base"] * n), "production": split("prod", ["feedback"] * 20)}


def merged_settings() -> ValidateSettings:
    return ValidateSettings(min_rows=10)


def outcome_of(result: ValidationResult, name: str, split: str):
    return next(o for o in result.outcomes if o.name == name and o.split == split)


def test_a_clean_merge_passes_the_provenance_and_no_leak_checks():
    result = validate_dataset(merged(), merged_settings())
    assert result.success, [o.message for o in result.failures]
    assert result.rows["production"] == 20
    names = {(o.name, o.split) for o in result.outcomes}
    assert {("no_leak", "train+validation/production"), ("no_leak", "train+validation/test"),
            ("no_feedback_in_test", "test"), ("provenance_values", "production")} <= names


def test_a_planted_production_leak_is_caught_and_its_rows_named():
    frames = merged()
    frames["production"].loc[3, "text"] = "  " + frames["validation"]["text"].iloc[7].replace(" ", "   ") + " "
    result = validate_dataset(frames, merged_settings())
    leak = outcome_of(result, "no_leak", "train+validation/production")
    assert not result.success and not leak.success and leak.observed == 1
    assert "production row 3 = validation row 7" in leak.message


def test_feedback_repeating_a_test_text_and_feedback_in_test_fail():
    frames = merged()
    frames["train"].loc[N - 1, "text"] = frames["test"]["text"].iloc[5]  # a feedback row of train
    frames["test"].loc[0, "provenance"] = "feedback"
    frames["train"].loc[0, "provenance"] = "prod"
    result = validate_dataset(frames, ValidateSettings(min_rows=10, max_overlap_share=0.5))
    failed = {(o.name, o.split) for o in result.failures}
    assert failed == {("no_leak", "train+validation/test"), ("no_feedback_in_test", "test"),
                      ("provenance_values", "train")}
    assert "test row 5 = train row 39" in outcome_of(result, "no_leak", "train+validation/test").message


def test_a_base_row_repeating_a_test_text_is_left_to_overlap_share():
    frames = merged()
    frames["train"].loc[0, "text"] = frames["test"]["text"].iloc[5]  # base: a corpus' natural duplicate
    result = validate_dataset(frames, ValidateSettings(min_rows=10, max_overlap_share=0.05))
    assert result.success, [o.message for o in result.failures]


def test_cli_reads_the_optional_production_slice(tmp_path):
    frames = merged()
    for name, frame in frames.items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
    frames["production"].loc[1, "label"] = 5
    frames["production"].to_parquet(tmp_path / "production.parquet")
    assert main(["--dataset", str(tmp_path), "--out", str(tmp_path / "out"), "--min-rows", "10"]) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    bad = [o for o in report["outcomes"] if not o["success"]]
    assert [(o["name"], o["split"]) for o in bad] == [("label_in_set", "production")]
    (tmp_path / "production.parquet").unlink()
    assert main(["--dataset", str(tmp_path), "--out", str(tmp_path / "out2"), "--min-rows", "10"]) == 0


def test_no_leak_reads_a_split_without_the_provenance_column_as_base_rows():
    """A hand-made dataset whose validation split lacks the provenance column: judged (as base rows), no KeyError."""
    import pandas as pd

    from sentimentops.steps.validate.leaks import run_no_leak

    frames = {"train": pd.DataFrame({"text": ["a kind film", "a fed-back review"], "label": [1, 0],
                                     "provenance": ["base", "feedback"]}),
              "validation": pd.DataFrame({"text": ["another film"], "label": [1]}),
              "test": pd.DataFrame({"text": ["a fed-back review"], "label": [0], "provenance": ["base"]})}
    outcomes = run_no_leak(frames)
    assert outcomes and not all(o.success for o in outcomes)  # the fed-back test text in train is still caught
    frames["train"] = frames["train"].iloc[:1]
    assert all(o.success for o in run_no_leak(frames))
