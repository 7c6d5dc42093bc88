"""ingest: reviews in (the Hugging Face dataset, or local parquet/CSV/JSONL), seeded train/validation/test out.

The validation split is carved from train so that nothing is ever selected on test (ARCHITECTURE.md, style 10).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.hub import go_offline, hub_reachable
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.manifests import write_manifest

log = get_logger(__name__)

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


class SourceError(DataError):
    """The source cannot be read (missing, unknown format, no text/label columns): exit 1, never retried."""


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [("train", self.train), ("validation", self.validation), ("test", self.test)]


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


def make_splits(raw: dict[str, pd.DataFrame], settings: IngestSettings) -> Splits:
    """The pure core: seeded sampling, test carved first when the source has none, validation from train."""
    if "all" in raw:
        train_pool, test_pool = split_off(raw["all"], settings.test_fraction, settings.seed)
    else:
        train_pool, test_pool = raw["train"], raw["test"]
    train = stratified_sample(train_pool, settings.sample_size, settings.seed)
    train, validation = split_off(train, settings.val_fraction, settings.seed + 1)
    test = stratified_sample(test_pool, settings.test_size, settings.seed + 2)
    return Splits(train=train, validation=validation, test=test)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="Output folder: <split>.parquet and manifest.json.")


@stage_main("ingest")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(IngestSettings, argv, prog="sentimentops ingest", description=__doc__,
                                    add_arguments=_arguments)
    raw, used, fallback = resolve_source(settings)
    splits = make_splits(raw, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(args.out / f"{name}.parquet", index=False)
        log.info("ingest: %s: %d rows", name, len(frame))
    write_manifest(
        args.out, "ingest",
        outputs={name: f"{name}.parquet" for name, _ in splits.items()},
        params=settings.model_dump(include={"source", "sample_size", "test_size", "val_fraction", "seed"}),
        metrics={f"{name}_rows": len(frame) for name, frame in splits.items()},
        refs={"source": used, "offline_fallback": fallback},
    )
    return 0
