"""The data of the feedback-loop benchmark (benchmarks/feedback_loop.py, benchmarks/feedback_feasibility.py), drawn
in one place so every run and every variant sees the same rows.

- Base corpus: the IMDB draw `make run` trains on (ingest's own `make_splits` over the shared IMDB folder, sample
  2,300, seed 42: 2,070 train + 230 validation rows), and the IMDB sample test set (1,000 reviews, 500/500).
- Rotten Tomatoes (rt_polarity, 10,662 one-sentence snippets): a seeded, label-balanced held-out set (1,000 by
  default) that is never sent as traffic and never labelled, and the traffic pool (every other snippet, shuffled
  with the same seed) from which the served requests, and so the labelled feedback, are drawn. Disjoint by
  construction: the held-out snippets are removed from the pool by position, and rt_polarity has no duplicate texts.

    .venv/bin/python benchmarks/feedback_data.py --out /tmp/feedback-data   # writes the tables, prints their sizes
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
IMDB = SHARED / "imdb"
RT = SHARED / "rt_polarity" / "rt_polarity.parquet"
SEED = 42
SAMPLE_SIZE = 2300  # quickstart's DEMO_PARAMETERS["sample-size"]: 2,070 train + 230 validation


@dataclass(frozen=True)
class LoopData:
    imdb_train: pd.DataFrame  # text, label
    imdb_validation: pd.DataFrame
    imdb_test: pd.DataFrame
    rt_held_out: pd.DataFrame  # never served, never labelled
    rt_traffic: pd.DataFrame  # the pool the served requests come from, in serving order


def balanced(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n rows, half per label, shuffled (n odd: the extra row is negative)."""
    per = {0: n - n // 2, 1: n // 2}
    parts = [frame[frame["label"] == label].sample(n=k, random_state=seed + label) for label, k in per.items()]
    return pd.concat(parts).sample(frac=1.0, random_state=seed)


def split_rt(rt: pd.DataFrame, held_out: int, seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(held-out, traffic pool): disjoint by position; the pool shuffled with the same seed."""
    rt = rt.reset_index(drop=True)
    held = balanced(rt, held_out, seed)
    pool = rt.drop(index=held.index).sample(frac=1.0, random_state=seed + 7)
    return held.reset_index(drop=True)[["text", "label"]], pool.reset_index(drop=True)[["text", "label"]]


def load(held_out: int = 1000, sample_size: int = SAMPLE_SIZE, imdb: Path = IMDB, rt: Path = RT) -> LoopData:
    from sentimentops.steps.ingest import IngestSettings, make_splits, read_local

    splits = make_splits(read_local(imdb), IngestSettings(sample_size=sample_size, test_size=1, seed=SEED))
    test = pd.read_parquet(imdb / "sample_test.parquet")[["text", "label"]]
    held, pool = split_rt(pd.read_parquet(rt), held_out)
    return LoopData(imdb_train=splits.train[["text", "label"]].reset_index(drop=True),
                    imdb_validation=splits.validation[["text", "label"]].reset_index(drop=True),
                    imdb_test=test.reset_index(drop=True), rt_held_out=held, rt_traffic=pool)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--held-out", type=int, default=1000)
    args = parser.parse_args()
    data = load(args.held_out)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("imdb_train", "imdb_validation", "imdb_test", "rt_held_out", "rt_traffic"):
        frame = getattr(data, name)
        frame.to_parquet(args.out / f"{name}.parquet", index=False)
        print(f"{name:<16}{len(frame):>7} rows  ({int((frame['label'] == 1).sum())} positive)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
