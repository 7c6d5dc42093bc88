"""ingest: reviews in (the Hugging Face dataset, or local parquet/CSV/JSONL), seeded train/validation/test out,
merged with the labelled feedback of the production store (steps/core/production.py).

The validation split is carved from train so that nothing is ever selected on test (ARCHITECTURE.md, style 10).

Feedback (people's true labels for production requests) is what makes a drift-triggered retrain learn the drift:
without it the retrain re-reads the same static corpus. Rules, in order (`select_feedback`):
- a label deferred by a replica that had not captured its id (production.DEFERRED_ORIGIN) takes its text from the
  store's capture with that id (production.resolve_deferred), or is dropped when no capture, or captures of more
  than one text, have it: first, so that it cannot hide a label with text for the same id;
- one label per request id (production.latest_feedback), rows without a usable text or a 0/1 label dropped;
- only the last `feedback_window_days` days (0: all), then one row per whitespace-normalised text (the newest);
- a feedback text equal to a base test row is dropped (it would put a test answer into train), and one equal to a
  base train/validation row too (a duplicate there adds nothing, and in the production slice it would be a leak);
- at most `feedback_max_rows`, the most recent kept;
- the most recent `production_fraction` of what is left is held out as `production.parquet`, the "production" test
  slice evaluate and the policy judge on (none when that share is under `production_min_rows`); the rest joins
  train before validation is carved, so checkpoint selection sees the traffic's mix too.
Feedback never enters the base test split. Every row carries a provenance column (base / feedback). An empty or
missing store changes nothing but that column.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.errors import DataError, UsageError, stage_main
from sentimentops.steps.core.hub import go_offline, hub_reachable
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.manifests import write_manifest
from sentimentops.steps.core.production import (
    BASE_PROVENANCE,
    CAPTURES,
    DEFERRED_ORIGIN,
    FEEDBACK,
    FEEDBACK_PROVENANCE,
    PRODUCTION_MIN_ROWS,
    PRODUCTION_SPLIT,
    PROVENANCE_COLUMN,
    Store,
    capture_frame,
    latest_feedback,
    normalised,
    resolve_deferred,
)

log = get_logger(__name__)
# google.api_core / google.auth exception names that no retry mends (matched by name: the library is optional here).
GCS_PERMANENT_ERRORS = frozenset({"NotFound", "Forbidden", "Unauthorized", "DefaultCredentialsError"})

READERS = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True),
           ".json": pd.read_json}
COLUMNS = ["text", "label"]


class IngestSettings(CommonSettings):
    section: ClassVar[str] = "ingest"
    source: str = Field("auto", description="hf:<dataset id>, a local file or folder, `demo`, or `auto`.")
    hf_dataset: str = Field("stanfordnlp/imdb", description="The dataset `auto` asks the hub for.")
    sample_size: int = Field(0, ge=0, description="Train rows to sample before carving validation (0 = all).")
    test_size: int = Field(0, ge=0, description="Test rows to sample (0 = all).")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the train sample held out for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share held out as test when a source has no test split.")
    seed: int = Field(42, description="Seed for every sampling decision.")
    fallback_sources: list[str] = Field(default_factory=list, description="Tried in order when the hub is down.")
    feedback: bool = Field(True, description="Merge the labelled feedback of common.production_store (none when "
                           "the store is empty or absent).")
    feedback_max_rows: int = Field(0, ge=0, description="At most this many feedback rows, the most recent kept "
                                   "(0 = no cap).")
    feedback_window_days: float = Field(0, ge=0, description="Only feedback labelled in the last N days "
                                        "(0 = all).")
    production_fraction: float = Field(0.2, ge=0, lt=1, description="Share of the kept feedback, the most recent, "
                                       "held out as the production test slice (production.parquet).")
    production_min_rows: int = Field(PRODUCTION_MIN_ROWS, ge=1, description="No production slice below this many "
                                     "rows (all feedback then joins train): at 50 rows one error moves accuracy 2 "
                                     "points.")


class SourceError(DataError):
    """The source cannot be read (missing, unknown format, no text/label columns): exit 1, never retried."""


class FeedbackError(DataError):
    """The production store holds feedback parts that cannot be read (not parquet, columns missing): exit 1."""


# Why a feedback row was left out, in the order the rules apply (manifest metrics feedback_dropped_<reason>).
DROP_REASONS = ("unmatched_id", "ambiguous_id", "duplicate_id", "invalid", "outside_window", "duplicate_text",
                "in_base_test", "in_base_train", "over_cap")


@dataclass
class FeedbackCounts:
    read: int = 0
    kept: int = 0
    train: int = 0
    production: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    def metrics(self) -> dict[str, float]:
        return {"feedback_read": self.read, "feedback_kept": self.kept, "feedback_train_rows": self.train,
                "feedback_production_rows": self.production,
                **{f"feedback_dropped_{reason}": n for reason, n in self.dropped.items()}}


@dataclass
class FeedbackSelection:
    train: pd.DataFrame       # joins train (COLUMNS + provenance)
    production: pd.DataFrame  # the production slice (may be empty: none carved)
    counts: FeedbackCounts


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    production: pd.DataFrame | None = None  # the held-out recent feedback; None: no slice carved
    feedback: FeedbackCounts | None = None  # None: no store read

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        found = [("train", self.train), ("validation", self.validation), ("test", self.test)]
        return found + ([(PRODUCTION_SPLIT, self.production)] if self.production is not None else [])


def read_table(path: Path) -> pd.DataFrame:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise SourceError(f"{path}: unsupported format (use {', '.join(READERS)})")
    try:
        frame = reader(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid and pandas' parser errors are ValueErrors
        raise SourceError(f"{path}: not a readable {path.suffix} file: {err}") from err
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame[COLUMNS].reset_index(drop=True)


def read_local(path: Path) -> dict[str, pd.DataFrame]:
    """A file is one table; a folder with train.* and test.* keeps that split, otherwise its tables are joined."""
    if path.is_file():
        return {"all": read_table(path)}
    if not path.is_dir():
        raise SourceError(f"{path}: no such file or folder")
    tables = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in READERS}
    if "train" in tables and "test" in tables:
        return {"train": read_table(tables["train"]), "test": read_table(tables["test"])}
    if not tables:
        raise SourceError(f"{path}: no {'/'.join(READERS)} files")
    return {"all": pd.concat([read_table(p) for p in tables.values()], ignore_index=True)}


def read_demo() -> dict[str, pd.DataFrame]:
    with resources.as_file(resources.files("sentimentops.steps") / "demo" / "reviews.jsonl") as path:
        return {"all": read_table(path)}


def read_hub(dataset: str) -> dict[str, pd.DataFrame]:
    import datasets  # the ingest extra; imported here so other sources need no `datasets`

    loaded = datasets.load_dataset(dataset)
    return {split: loaded[split].to_pandas()[COLUMNS] for split in ("train", "test")}


def resolve_source(settings: IngestSettings) -> tuple[dict[str, pd.DataFrame], str, bool]:
    """Returns (raw tables, a description of what was read, whether an offline fallback was used)."""
    source = settings.source
    if source == "demo":
        return read_demo(), "demo", False
    if source.startswith("hf:") or source == "auto":
        dataset = source[3:] if source.startswith("hf:") else settings.hf_dataset
        if hub_reachable():
            return read_hub(dataset), f"hf:{dataset}", False
        if not settings.allow_offline_fallback:
            raise SourceError(f"the Hugging Face hub is unreachable and profile {settings.profile!r} allows no fallback")
        go_offline()
        for fallback in settings.fallback_sources:
            if fallback == "demo":
                tables, used = read_demo(), "demo"
            elif Path(fallback).exists():
                tables, used = read_local(Path(fallback)), str(Path(fallback).resolve())
            else:
                continue
            log.warning("offline: the Hugging Face hub is unreachable; reading %s instead of hf:%s", used, dataset)
            return tables, used, True
        raise SourceError(f"the hub is unreachable and no fallback exists (tried {settings.fallback_sources})")
    return read_local(Path(source)), str(Path(source).resolve()), False


def stratified_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n rows (0 or >= len: all rows) keeping each label's share, shuffled; labels may be anything (even null)."""
    if n == 0 or n >= len(frame):
        return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    groups = frame.groupby("label", dropna=False, sort=True).groups
    picked = []
    for i, (_, index) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        k = round(n * len(index) / len(frame))
        picked.append(frame.loc[index].sample(n=min(k, len(index)), random_state=seed + i))
    return pd.concat(picked).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def split_off(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held out): a stratified share of `frame` held out, rows matched by position (texts may repeat)."""
    marked = frame.reset_index(drop=True).assign(_pos=range(len(frame)))
    held = stratified_sample(marked, max(1, round(len(frame) * fraction)), seed)
    rest = marked[~marked["_pos"].isin(held["_pos"])]
    return rest.drop(columns="_pos").reset_index(drop=True), held.drop(columns="_pos")


def _valid_label(value: object) -> bool:
    return not isinstance(value, bool) and value in (0, 1)


def select_feedback(feedback: pd.DataFrame, settings: IngestSettings, *, base_test: pd.DataFrame,
                    base_train: pd.DataFrame, now: float, captures: pd.DataFrame | None = None) -> FeedbackSelection:
    """The pure core of the merge (module docstring): which feedback rows train, which form the production slice,
    and how many each rule dropped. Deterministic: rows are ordered by (ts, id), never by chance. `captures`: the
    store's captures, where deferred labels find their texts (None: none read, every deferred label unmatched)."""
    counts = FeedbackCounts(read=len(feedback))
    empty = pd.DataFrame({"text": pd.Series(dtype=object), "label": pd.Series(dtype="int64"),
                          PROVENANCE_COLUMN: pd.Series(dtype=object)})
    if not len(feedback):
        return FeedbackSelection(empty, empty.copy(), counts)
    resolved = resolve_deferred(feedback, captures if captures is not None else capture_frame([]))
    counts.dropped["unmatched_id"], counts.dropped["ambiguous_id"] = resolved.unmatched, resolved.ambiguous
    rows = latest_feedback(resolved.feedback)
    counts.dropped["duplicate_id"] = len(resolved.feedback) - len(rows)

    def drop(keep: pd.Series, reason: str) -> None:
        nonlocal rows
        counts.dropped[reason] += int((~keep).sum())
        rows = rows[keep].reset_index(drop=True)

    text = rows["text"].map(lambda v: isinstance(v, str) and bool(v.strip()))
    drop(text & rows["label"].map(_valid_label) & rows["ts"].notna(), "invalid")
    if settings.feedback_window_days:
        drop(rows["ts"] >= now - settings.feedback_window_days * 86400, "outside_window")
    rows = rows.assign(_norm=normalised(rows["text"])).sort_values(["ts", "id"], kind="stable")
    drop(~rows["_norm"].duplicated(keep="last"), "duplicate_text")  # the newest label of a text wins
    drop(~rows["_norm"].isin(set(normalised(base_test["text"]).dropna())), "in_base_test")
    drop(~rows["_norm"].isin(set(normalised(base_train["text"]).dropna())), "in_base_train")
    if settings.feedback_max_rows and len(rows) > settings.feedback_max_rows:
        keep = pd.Series([False] * (len(rows) - settings.feedback_max_rows) + [True] * settings.feedback_max_rows)
        drop(keep, "over_cap")
    counts.kept = len(rows)
    held = round(len(rows) * settings.production_fraction)
    if held < settings.production_min_rows:
        held = 0
    merged = rows.assign(label=rows["label"].astype("int64"), **{PROVENANCE_COLUMN: FEEDBACK_PROVENANCE})
    merged = merged[[*COLUMNS, PROVENANCE_COLUMN]]
    train, production = merged.iloc[: len(merged) - held], merged.iloc[len(merged) - held :]
    counts.train, counts.production = len(train), len(production)
    return FeedbackSelection(train.reset_index(drop=True), production.reset_index(drop=True), counts)


def make_splits(raw: dict[str, pd.DataFrame], settings: IngestSettings, feedback: pd.DataFrame | None = None,
                now: float | None = None, captures: pd.DataFrame | None = None) -> Splits:
    """The pure core: seeded sampling, test carved first when the source has none, feedback merged into train
    (`select_feedback`), validation from train. `feedback` None: no store was read."""
    if "all" in raw:
        train_pool, test_pool = split_off(raw["all"], settings.test_fraction, settings.seed)
    else:
        train_pool, test_pool = raw["train"], raw["test"]
    train = stratified_sample(train_pool, settings.sample_size, settings.seed).assign(
        **{PROVENANCE_COLUMN: BASE_PROVENANCE})
    test = stratified_sample(test_pool, settings.test_size, settings.seed + 2).assign(
        **{PROVENANCE_COLUMN: BASE_PROVENANCE})
    production, counts = None, None
    if feedback is not None:
        chosen = select_feedback(feedback, settings, base_test=test, base_train=train,
                                 now=time.time() if now is None else now, captures=captures)
        counts = chosen.counts
        if len(chosen.train):  # no feedback: the base rows exactly as before (same order, same bytes)
            train = pd.concat([train, chosen.train], ignore_index=True).sample(
                frac=1.0, random_state=settings.seed + 3).reset_index(drop=True)
        production = chosen.production if len(chosen.production) else None
    train, validation = split_off(train, settings.val_fraction, settings.seed + 1)
    return Splits(train=train, validation=validation, test=test, production=production, feedback=counts)


def read_feedback(settings: IngestSettings) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(the store's feedback rows, its captures when deferred labels need them); (None, None) when merging is off or
    no store is configured (empty production_store)."""
    if not settings.feedback or not settings.production_store.strip():
        return None, None
    try:
        store = Store(settings.production_store.strip())
    except ValueError as err:
        raise UsageError(f"production_store {settings.production_store!r}: {err}") from err
    try:
        frame = store.read_parts(FEEDBACK)
        deferred = int((frame["origin"] == DEFERRED_ORIGIN).sum())  # labels whose texts are in the captures
        captures = store.read_parts(CAPTURES) if deferred else None
    except (OSError, ValueError, ImportError) as err:  # ArrowInvalid and read_parts' missing column: ValueErrors
        raise FeedbackError(f"production store {store}: feedback cannot be read: {err}") from err
    except Exception as err:
        # No such bucket, no access, no credentials: the store setting or its IAM is wrong, and a retry will not
        # mend it (exit 1, one line). Anything else from GCS (unavailable, a timeout) stays retryable (exit 3).
        if type(err).__name__ in GCS_PERMANENT_ERRORS:
            raise FeedbackError(f"production store {store}: feedback cannot be read: {err}") from err
        raise
    log.info("ingest: %d feedback rows in %s", len(frame), store.kind_location(FEEDBACK))
    if captures is not None:
        log.info("ingest: %d deferred labels, %d captures to join them to", deferred, len(captures))
    return frame, captures


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="Output folder: <split>.parquet and manifest.json.")


@stage_main("ingest")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(IngestSettings, argv, prog="sentimentops ingest", description=__doc__,
                                    add_arguments=_arguments)
    raw, used, fallback = resolve_source(settings)
    feedback, captures = read_feedback(settings)
    splits = make_splits(raw, settings, feedback, captures=captures)
    args.out.mkdir(parents=True, exist_ok=True)
    if splits.production is None:  # a re-run into the same folder must not keep an earlier run's slice
        (args.out / f"{PRODUCTION_SPLIT}.parquet").unlink(missing_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(args.out / f"{name}.parquet", index=False)
        log.info("ingest: %s: %d rows", name, len(frame))
    outputs = {name: f"{name}.parquet" for name, _ in splits.items()}
    metrics: dict[str, float] = {f"{name}_rows": len(frame) for name, frame in splits.items()}
    if splits.feedback is not None:
        c = splits.feedback
        log.info("ingest: feedback from %s: %d read, %d kept (%d to train, %d in the production slice); dropped %s",
                 settings.production_store, c.read, c.kept, c.train, c.production,
                 {k: v for k, v in c.dropped.items() if v} or "none")
        metrics.update(c.metrics())
    write_manifest(
        args.out, "ingest", outputs=outputs,
        params=settings.model_dump(include={"source", "sample_size", "test_size", "val_fraction", "seed"}),
        metrics=metrics,
        refs={"source": used, "offline_fallback": fallback,
              "production_store": str(settings.production_store) if splits.feedback is not None else ""},
    )
    return 0
