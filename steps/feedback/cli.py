"""`sentimentops feedback import FILE`: bulk labels from a labelling tool (CSV, JSON lines or parquet with a text
and a label column, and optionally an id) into the production store's feedback, as one part
(steps/core/production.py; ingest merges them into the next training set).

Every row is checked first (a non-empty text; a label production.parse_label reads: 0/1, negative/positive,
neg/pos). By default the import is all or nothing: any bad row and nothing is written, exit 1, with the rows and
reasons (the first 20 and a count). `--skip-invalid` writes the good rows and the rejected ones, each with its
reason, to a JSON-lines file (`--rejects`, default `<FILE>.rejected.jsonl` beside the input). A row without an id
gets production.text_feedback_id(text), the id the API gives a text's label, so a review labelled through both is
one label. Ids already in the store are skipped and counted (a re-import writes nothing new): the first label
stands, as the API's 409 says.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, add_settings_flags, settings_from_args
from sentimentops.steps.core.errors import DataError, UsageError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.core.production import (
    DEFERRED_ORIGIN,
    FEEDBACK,
    UNKNOWN_PREDICTION,
    Store,
    feedback_frame,
    parse_label,
    text_feedback_id,
)

log = get_logger("sentimentops.feedback")
SHOWN_ERRORS = 20  # rows named in the report; the rest are counted
# .json: a JSON array of objects (what labelling tools export) or JSON lines, told apart by the first character.
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}


class FeedbackSettings(CommonSettings):
    section: ClassVar[str] = "feedback"
    text_column: str = Field("text", description="The input's column holding the labelled text.")
    label_column: str = Field("label", description="The input's column holding the label (0/1, negative/positive).")
    id_column: str = Field("id", description="The input's column holding a captured request's id (optional: "
                           "rows without one get the text's id).")


@dataclass
class Rejected:
    row: int          # 1-based data row (CSV: the header is row 0; JSON lines: the line number)
    reason: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportResult:
    rows: int
    written: int
    already_stored: int
    duplicates: int
    rejected: list[Rejected]
    part: str | None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The file's rows as dicts of plain Python values (numpy scalars unwrapped, NaN as None)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{path}: unknown format {path.suffix!r} (expected {', '.join(sorted(FORMATS))})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if kind in ("json", "jsonl"):
        try:  # strict UTF-8, as the API reads bodies: a replaced character must not become training text
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid UTF-8: {err}") from err
        if kind == "json" and text.lstrip().startswith("["):
            try:
                values = json.loads(text)
            except ValueError as err:
                raise DataError(f"{path}: not a valid JSON array: {err}") from err
            return [{**(v if isinstance(v, dict) else {"__error__": "not a JSON object"}), "__row__": number}
                    for number, v in enumerate(values, 1)]
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as err:
                value = {"__error__": f"not valid JSON: {err}"}
            rows.append(value if isinstance(value, dict) else {"__error__": "not a JSON object"})
            rows[-1]["__row__"] = number
        return rows
    import pandas as pd

    try:
        frame = (pd.read_csv(path, dtype=str, keep_default_na=False) if kind == "csv" else pd.read_parquet(path))
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read as {kind}: {err}") from err
    records = frame.to_dict(orient="records")
    return [{**{k: _plain(v) for k, v in r.items()}, "__row__": i} for i, r in enumerate(records, 1)]


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def check_rows(rows: list[dict[str, Any]], settings: FeedbackSettings) -> tuple[list[dict[str, Any]], list[Rejected], int]:
    """(valid rows as {id, text, label}, rejected rows, duplicates within the file)."""
    text_col, label_col, id_col = settings.text_column, settings.label_column, settings.id_column
    good: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    seen: dict[str, tuple[int, int]] = {}  # id -> (label, row)
    duplicates = 0
    for raw in rows:
        number = raw.pop("__row__")
        values = {k: raw.get(k) for k in (id_col, text_col, label_col) if k in raw}
        if "__error__" in raw:
            rejected.append(Rejected(number, raw["__error__"]))
            continue
        text = raw.get(text_col)
        if not isinstance(text, str) or not text.strip():
            rejected.append(Rejected(number, f"{text_col!r}: expected a non-empty text, got {text!r:.60}", values))
            continue
        try:
            label = parse_label(raw.get(label_col))
        except ValueError as err:
            rejected.append(Rejected(number, f"{label_col!r}: {err}", values))
            continue
        given = raw.get(id_col)
        if isinstance(given, int) and not isinstance(given, bool):
            given = str(given)
        if given is not None and given != "" and not isinstance(given, str):
            rejected.append(Rejected(number, f"{id_col!r}: expected a string id, got {given!r:.60}", values))
            continue
        row_id = given or text_feedback_id(text)
        if row_id in seen:
            first_label, first_row = seen[row_id]
            if first_label != label:
                rejected.append(Rejected(number, f"id {row_id!r} has label {label} here and {first_label} on row "
                                         f"{first_row}", values))
            else:
                duplicates += 1
            continue
        seen[row_id] = (label, number)
        good.append({"id": row_id, "text": text, "label": label})
    return good, rejected, duplicates


def import_feedback(path: Path, store: Store, settings: FeedbackSettings, *, skip_invalid: bool = False,
                    rejects: Path | None = None) -> ImportResult:
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = set().union(*(r.keys() for r in rows)) - {"__row__", "__error__"}
    missing = [c for c in (settings.text_column, settings.label_column) if c not in columns]
    if missing:
        raise DataError(f"{path}: no column(s) {missing} (has {sorted(columns)}); rename with --text-column / "
                        "--label-column")
    good, rejected, duplicates = check_rows(rows, settings)
    if rejected:
        report = "; ".join(f"row {r.row}: {r.reason}" for r in rejected[:SHOWN_ERRORS])
        more = f" (and {len(rejected) - SHOWN_ERRORS} more)" if len(rejected) > SHOWN_ERRORS else ""
        if not skip_invalid:
            raise DataError(f"{path}: {len(rejected)} of {len(rows)} rows invalid, nothing written "
                            f"(--skip-invalid writes the others): {report}{more}")
        target = rejects or path.with_name(path.name + ".rejected.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(json.dumps({"row": r.row, "reason": r.reason, **r.values}, default=str) + "\n"
                                  for r in rejected), encoding="utf-8")
        log.warning("%s: %d rows rejected (-> %s): %s%s", path, len(rejected), target, report, more)
        if not good:
            raise DataError(f"{path}: every row is invalid ({target} says why); nothing written")
    # an id whose only stored label is deferred (no text: production.DEFERRED_ORIGIN) is not stored for this purpose:
    # the deferred row may never find its capture, and this row brings the text
    existing = store.read_parts(FEEDBACK)
    stored = set(existing.loc[existing["origin"] != DEFERRED_ORIGIN, "id"])
    new = [r for r in good if r["id"] not in stored]
    part = None
    if new:
        now = time.time()
        origin = f"import:{path.name}"
        part = store.write_part(FEEDBACK, feedback_frame(
            {**r, "ts": now, "predicted": UNKNOWN_PREDICTION, "model_version": "", "origin": origin} for r in new))
    return ImportResult(rows=len(rows), written=len(new), already_stored=len(good) - len(new),
                        duplicates=duplicates, rejected=rejected, part=part)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sentimentops feedback", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="load labels from a CSV, JSON-lines or parquet file into the store",
                         description="Load labels (text + label, optional id) into the production store's feedback.")
    imp.add_argument("file", type=Path, help="a .csv, .jsonl, .json (an array or JSON lines) or .parquet file")
    imp.add_argument("--store", help="the production store (default: the production_store setting)")
    imp.add_argument("--skip-invalid", action="store_true", help="write the valid rows and put the rejected ones, "
                     "with their reasons, in --rejects (default: nothing is written when a row is invalid)")
    imp.add_argument("--rejects", type=Path, help="where --skip-invalid writes rejected rows (default: "
                     "FILE.rejected.jsonl beside the input)")
    add_settings_flags(imp, FeedbackSettings)
    return p


@stage_main("feedback")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from_args(FeedbackSettings, args)
    location = args.store or settings.production_store
    if not location:
        raise UsageError("no production store: pass --store or set production_store")
    try:
        store = Store(location)
    except ValueError as err:
        raise UsageError(f"--store {location!r}: {err}") from err
    result = import_feedback(args.file, store, settings, skip_invalid=args.skip_invalid, rejects=args.rejects)
    emit(f"feedback import: {args.file.name}: {result.rows} rows, {result.written} written"
         f"{' to ' + result.part if result.part else ''}, {result.already_stored} already in the store, "
         f"{result.duplicates} repeated in the file, {len(result.rejected)} rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
