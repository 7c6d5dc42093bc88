"""Rendering of validation results: pure functions over hand-built results (no GX needed)."""
from __future__ import annotations

import json
from html.parser import HTMLParser

from sentimentops.steps.validate.checks import ExpectationOutcome, ValidationResult
from sentimentops.steps.validate.report import render_html, render_json, render_markdown, write_reports


def outcome(name: str, split: str, success: bool, observed, message: str) -> ExpectationOutcome:
    return ExpectationOutcome(name=name, split=split, engine="great_expectations", expectation="Expect...",
                              success=success, observed=observed, expected="between 0.4 and 0.6", message=message)


def result(success: bool) -> ValidationResult:
    outcomes = [
        outcome("row_count", "train", True, 2000, "observed 2000"),
        # A review excerpt with a pipe, a newline and markup: must not break the table or the page.
        outcome("label_balance", "train", success, 0.9, "observed 0.9 | e.g. '<b>great</b>\nfilm' & more"),
        outcome("overlap_share", "train/test", True, 0.005, "5 of 1000 test rows also in train"),
    ]
    return ValidationResult(success=success, rows={"train": 2000, "test": 1000}, outcomes=outcomes,
                            thresholds={"min_rows": 100, "overlap_pairs": [["train", "test"]]})


def test_markdown_table_has_one_row_per_outcome_and_lists_failures():
    text = render_markdown(result(False))
    assert text.startswith("# Dataset validation: FAILED: 1 of 3 expectations failed")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 4  # header + 3 outcomes
    # Escaped pipes keep every row at the header's 6 cells.
    assert all(line.replace("\\|", "").count("|") == 7 for line in rows)
    assert "- **train** `label_balance`: observed 0.9 \\| e.g." in text
    assert "`min_rows`: 100" in text


def test_markdown_of_a_pass_has_no_failure_section():
    text = render_markdown(result(True))
    assert "PASSED: all 3 expectations hold" in text and "## Failures" not in text


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_and_escapes_review_text():
    page = render_html(result(False))
    parser = _Collector()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "http" not in page
    assert "<b>great</b>" not in page and "&lt;b&gt;great&lt;/b&gt;" in page
    assert parser.tags.count("table") == 3  # one per split (train, train/test) + thresholds
    assert 'class="badge bad"' in page and 'tr class="fail"' in page
    assert "FAILED: 1 of 3 expectations failed" in "".join(parser.text)


def test_json_round_trips_to_the_same_result():
    original = result(False)
    assert ValidationResult.model_validate(json.loads(render_json(original))) == original


def test_write_reports_writes_three_files_deterministically(tmp_path):
    names = write_reports(result(True), tmp_path)
    assert sorted(names) == ["report.html", "report.json", "report.md"]
    first = {n: (tmp_path / n).read_bytes() for n in names}
    write_reports(result(True), tmp_path)
    assert first == {n: (tmp_path / n).read_bytes() for n in names}  # no timestamps: stable content hash
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no .tmp left behind
