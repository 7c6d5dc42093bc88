"""validate's checks of a dataset ingest merged with production feedback (steps/ingest.py): provenance, the strict
no-leak rule, and the production slice's own contract. Computed with pandas; each returns the same typed outcomes
as the GX suite; sentimentops.steps.validate.checks calls them from `validate_dataset`.
"""
from __future__ import annotations

import pandas as pd

from sentimentops.steps.core.production import (
    BASE_PROVENANCE,
    FEEDBACK_PROVENANCE,
    PRODUCTION_SPLIT,
    PROVENANCE_COLUMN,
    normalised,
)
from sentimentops.steps.validate.outcomes import REQUIRED_COLUMNS, ExpectationOutcome

PROVENANCES = (BASE_PROVENANCE, FEEDBACK_PROVENANCE)
# The splits a model learns from; the no-leak rule keeps every held-out text (test, production) out of them.
LEARNED_SPLITS = ("train", "validation")
LEAK_EXAMPLES = 5  # rows named in a leak's message (the JSON report's message carries them too)


def run_provenance(frames: dict[str, pd.DataFrame]) -> list[ExpectationOutcome]:
    """Where ingest merged production feedback (a provenance column): every row says base or feedback, and the base
    test split holds no feedback (feedback is judged on its own slice, production.parquet). Nothing to check (no
    outcome) for a dataset without the column: it has no feedback."""
    if not any(PROVENANCE_COLUMN in f.columns for f in frames.values()):
        return []
    outcomes = []
    for split, frame in frames.items():
        made = {"name": "provenance_values", "split": split, "engine": "pandas",
                "expectation": f"{PROVENANCE_COLUMN} in {{{', '.join(PROVENANCES)}}}",
                "expected": f"every row {' or '.join(PROVENANCES)}"}
        if PROVENANCE_COLUMN not in frame.columns:
            outcomes.append(ExpectationOutcome(**made, success=False, observed=None,
                                               message=f"not evaluated: no {PROVENANCE_COLUMN} column"))
            continue
        bad = ~frame[PROVENANCE_COLUMN].isin(PROVENANCES)
        examples = ", ".join(repr(v) for v in frame.loc[bad, PROVENANCE_COLUMN].unique()[:3])
        outcomes.append(ExpectationOutcome(
            **made, success=not bad.any(), observed=int(bad.sum()),
            message=f"{int(bad.sum())} of {len(frame)} rows have another value ({examples})" if bad.any()
            else f"all {len(frame)} rows ok ({int((frame[PROVENANCE_COLUMN] == FEEDBACK_PROVENANCE).sum())} feedback)"))
    if "test" in frames and PROVENANCE_COLUMN in frames["test"].columns:
        test = frames["test"]
        rows = [int(i) for i in (test[PROVENANCE_COLUMN] == FEEDBACK_PROVENANCE).to_numpy().nonzero()[0]]
        outcomes.append(ExpectationOutcome(
            name="no_feedback_in_test", split="test", engine="pandas",
            expectation=f"rows with {PROVENANCE_COLUMN} == {FEEDBACK_PROVENANCE}", expected="none",
            success=not rows, observed=len(rows),
            message=f"{len(rows)} feedback rows in the base test split, e.g. rows {rows[:LEAK_EXAMPLES]}" if rows
            else "no feedback in the base test split"))
    return outcomes


def _learned(frames: dict[str, pd.DataFrame], feedback_only: bool) -> dict[str, tuple[str, int]]:
    """normalised text -> (split, row) of its first occurrence in train/validation (only feedback rows if asked)."""
    seen: dict[str, tuple[str, int]] = {}
    for split in LEARNED_SPLITS:
        frame = frames.get(split)
        if frame is None or "text" not in frame.columns:
            continue
        # A split without the column (a hand-made dataset) has base rows only.
        provenance = frame[PROVENANCE_COLUMN] if PROVENANCE_COLUMN in frame.columns else pd.Series(BASE_PROVENANCE,
                                                                                                     frame.index)
        keep = (provenance == FEEDBACK_PROVENANCE) if feedback_only else pd.Series(True, frame.index)
        for row, text in enumerate(normalised(frame["text"])):
            if text is not None and keep.iloc[row]:
                seen.setdefault(text, (split, row))
    return seen


def run_no_leak(frames: dict[str, pd.DataFrame]) -> list[ExpectationOutcome]:
    """The no-leak rule, strict (no share tolerated, unlike overlap_share's natural duplicates of a corpus): no
    production-slice text is in train or validation, and no feedback row of train or validation repeats a test
    text. Ingest drops such rows; this proves it on the files. The message names the rows (split and row number)."""
    outcomes = []
    checks = []
    if PRODUCTION_SPLIT in frames:
        checks.append((PRODUCTION_SPLIT, False, "train/validation"))
    if "test" in frames and any(PROVENANCE_COLUMN in frames[s].columns for s in LEARNED_SPLITS if s in frames):
        checks.append(("test", True, "the feedback rows of train/validation"))
    for checked, feedback_only, reference in checks:
        frame = frames[checked]
        made = {"name": "no_leak", "split": f"{'+'.join(LEARNED_SPLITS)}/{checked}", "engine": "pandas",
                "expectation": f"{checked} rows whose whitespace-normalised text is in {reference}",
                "expected": "none"}
        if "text" not in frame.columns:
            outcomes.append(ExpectationOutcome(**made, success=False, observed=None,
                                               message="not evaluated: no text column"))
            continue
        seen = _learned(frames, feedback_only)
        hits = [(row, seen[t]) for row, t in enumerate(normalised(frame["text"])) if t is not None and t in seen]
        named = "; ".join(f"{checked} row {row} = {split} row {other} ({str(frame['text'].iloc[row])[:40]!r})"
                          for row, (split, other) in hits[:LEAK_EXAMPLES])
        outcomes.append(ExpectationOutcome(
            **made, success=not hits, observed=len(hits),
            message=f"{len(hits)} of {len(frame)} {checked} rows leak into {reference}: {named}" if hits
            else f"none of the {len(frame)} {checked} rows is in {reference}"))
    return outcomes


def run_production(frame: pd.DataFrame) -> list[ExpectationOutcome]:
    """The production slice's own contract (pandas: the GX suite's balance and size bounds are for the base corpus;
    real traffic need not be 50/50): the columns, a 0/1 label on every row, a non-blank text on every row."""
    made = {"split": PRODUCTION_SPLIT, "engine": "pandas"}
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        return [ExpectationOutcome(**made, name="columns_present", expectation="columns", success=False,
                                   observed=", ".join(missing), expected=f"includes {', '.join(REQUIRED_COLUMNS)}",
                                   message=f"missing column(s) {missing}")]
    bad_label = ~frame["label"].isin([0, 1]) | frame["label"].isna()
    bad_text = ~frame["text"].map(lambda v: isinstance(v, str) and bool(v.strip()))
    return [ExpectationOutcome(**made, name=name, expectation=what, expected=expected, success=not bad.any(),
                               observed=int(bad.sum()),
                               message=f"{int(bad.sum())} of {len(frame)} rows bad, e.g. rows "
                               f"{[int(i) for i in bad.to_numpy().nonzero()[0][:LEAK_EXAMPLES]]}" if bad.any()
                               else f"all {len(frame)} rows ok")
            for name, what, expected, bad in (("label_in_set", "label values", "in {0, 1}", bad_label),
                                              ("text_not_blank", "text values", "a non-blank str", bad_text))]
