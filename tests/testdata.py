"""The real data the tests read, resolved in one place; run as a script it builds the cache (`make test-data`).

Resolution, first match wins (a folder matches when it holds every file asked for):
1. `$SENTIMENTOPS_TEST_DATA` when set, and then only it: an explicit folder is never silently replaced by another;
   else the shared folder beside the checkout (`<repo>/../shared/data`), an optional local cache;
2. the user cache `${XDG_CACHE_HOME:-~/.cache}/sentimentops/test-data`, same layout;
3. when the Hugging Face hub answers, that cache is built from it by this file run as a child process with the HF
   offline switches removed from the child's environment only (tests/conftest.py sets them for everything else, and
   huggingface_hub reads them once, at import, so lifting them inside the test process would not work);
4. otherwise the caller skips with `Resolution.reason`: which files are missing, where they were looked for, and
   how to provide them.

Layout (shared/data/README.md): `imdb/sample_train.parquet` (2,000 rows) and `imdb/sample_test.parquet` (1,000), each
drawn label-balanced from its split with `random.Random(42)`; `rt_polarity/rt_polarity.parquet` (10,662 rows). The
tests read only these three (`git grep parquet tests`); the full IMDB train/test are not cached. Built from the hub,
the IMDB samples have `text, label` only (the hub copy has no rating or id) and are drawn by the README's recipe
from the hub's row order, which is not the shared copy's (sorted by review id): same sizes, balance and seed, other
reviews. No test depends on which reviews.

CLI: python tests/testdata.py [--out DIR] [--force]
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
ENV = "SENTIMENTOPS_TEST_DATA"
IMDB_FILES = ("imdb/sample_train.parquet", "imdb/sample_test.parquet")
RT_FILES = ("rt_polarity/rt_polarity.parquet",)
ALL_FILES = IMDB_FILES + RT_FILES
IMDB_HUB = "stanfordnlp/imdb"
RT_HUB = "cornell-movie-review-data/rotten_tomatoes"
# shared/data/README.md "Samples": per label, 1,000 from train and 500 from test, seed 42.
SAMPLES = {"train": 1000, "test": 500}
SEED = 42
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# A cold download of both data sets (the IMDB parquet files are about 85 MB) takes well under this on a CI runner.
BUILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Resolution:
    """Where the files are (`root`, with `source` naming the rung that found them), or why not (`reason`)."""

    root: Path | None
    source: str = ""
    reason: str = ""


def shared_dir(repo: Path = REPO) -> Path:
    return repo.parent / "shared" / "data"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sentimentops" / "test-data"


def missing(root: Path, files: Sequence[str]) -> list[str]:
    return [f for f in files if not (root / f).is_file()]


def hub_probe(endpoint: str = "https://huggingface.co", timeout_s: float = 3.0) -> str | None:
    """None when the hub accepts a TCP connection, else why not. Milliseconds, where `datasets` itself retries for
    about 24 s before failing on a machine without a route (steps/core/hub.py)."""
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"the Hugging Face hub is unreachable ({host}:{port}: {exc})"


def build_in_child(out: Path, env: Mapping[str, str]) -> str | None:
    """Build `out` by running this file in a child process without the HF offline switches; None, or the error."""
    child = {k: v for k, v in env.items() if k not in OFFLINE_VARS}
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--out", str(out)], env=child,
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"no result after {BUILD_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def resolve(files: Sequence[str] = ALL_FILES, *, env: Mapping[str, str] | None = None, repo: Path = REPO,
            probe: Callable[[str], str | None] = hub_probe,
            build: Callable[[Path, Mapping[str, str]], str | None] = build_in_child) -> Resolution:
    """The first folder holding every one of `files` (see the module docstring for the order), building the cache
    from the hub when nothing local has them; `probe` and `build` are injectable so tests need no network."""
    env = dict(os.environ) if env is None else env
    files = tuple(files)
    cache = cache_dir(env)
    explicit = env.get(ENV)
    if explicit:
        root = Path(explicit).expanduser()
        lack = missing(root, files)
        if not lack:
            return Resolution(root, ENV)
        return Resolution(None, reason=(
            f"test data missing: {ENV}={explicit} has no {', '.join(lack)}; point {ENV} at a folder with that "
            f"layout, or unset it to use the cache {cache} (`make test-data` fills it online)"))
    shared = shared_dir(repo)
    if not missing(shared, files):
        return Resolution(shared, "shared")
    if not missing(cache, files):
        return Resolution(cache, "cache")
    why = probe(env.get("HF_ENDPOINT") or "https://huggingface.co")
    if why is None:
        error = build(cache, env)
        if error is None and not missing(cache, files):
            return Resolution(cache, "hub")
        why = f"building it from the Hugging Face hub failed: {error or 'files still missing after the build'}"
    return Resolution(None, reason=(
        f"test data missing: {', '.join(missing(cache, files))} in neither {shared} nor the cache {cache}, and {why}; "
        f"run `make test-data` where the hub is reachable, or set {ENV} to a folder with that layout"))


# ---- building the cache (the child process / `make test-data`) ----

def balanced_sample(frame, n_per_label: int, seed: int = SEED):
    """shared/data/README.md's recipe: `rng = random.Random(seed)`, n row numbers of label 0 then n of label 1
    (positions in `frame`'s order), `rng.shuffle`, rows in that order."""
    rng = random.Random(seed)
    labels = frame["label"].tolist()
    idx = (rng.sample([i for i, label in enumerate(labels) if label == 0], n_per_label)
           + rng.sample([i for i, label in enumerate(labels) if label == 1], n_per_label))
    rng.shuffle(idx)
    return frame.iloc[idx].reset_index(drop=True)


def write_atomic(frame, path: Path) -> Path:
    """tmp + rename in the same folder: a reader (or an interrupted build) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_parquet(tmp, index=False, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def text_label(frame):
    return frame[["text", "label"]].astype({"label": "int64"}).reset_index(drop=True)


def build(out: Path) -> list[Path]:
    """Download through `datasets` (its own cache: HF_HOME, ~/.cache/huggingface) and write the layout to `out`."""
    import datasets
    import pandas as pd

    written = []
    for split, n in SAMPLES.items():
        full = text_label(datasets.load_dataset(IMDB_HUB, split=split).to_pandas())
        written.append(write_atomic(balanced_sample(full, n), out / "imdb" / f"sample_{split}.parquet"))
    rt = datasets.load_dataset(RT_HUB)
    known = ["train", "validation", "test"]
    order = sorted(rt, key=lambda s: known.index(s) if s in known else len(known))
    frame = pd.concat([text_label(rt[s].to_pandas()) for s in order], ignore_index=True)
    written.append(write_atomic(frame, out / "rt_polarity" / "rt_polarity.parquet"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the test-data cache from the Hugging Face hub (online).")
    parser.add_argument("--out", type=Path, default=None, help=f"default: {cache_dir()}")
    parser.add_argument("--force", action="store_true", help="rebuild even when the files are found")
    args = parser.parse_args(argv)
    out = args.out or cache_dir()
    if not args.force:
        if args.out is not None:  # an explicit folder: only it counts
            found = Resolution(out, "--out") if not missing(out, ALL_FILES) else Resolution(None)
        else:  # what the tests would read, without the network
            found = resolve(ALL_FILES, probe=lambda _: "not asked", build=lambda *_: "not asked")
        if found.root is not None:
            print(f"test data: complete at {found.root} ({found.source}); nothing to build (--force rebuilds {out})")
            return 0
    if args.out is None and os.environ.get(ENV):
        print(f"test data: note: {ENV} is set, so the tests read only {os.environ[ENV]}, not {out}", file=sys.stderr)
    for var in OFFLINE_VARS:  # this process exists to download; the offline switches stay set everywhere else
        os.environ.pop(var, None)
    why = hub_probe(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if why is not None:
        print(f"test data: cannot build {out}: {why}", file=sys.stderr)
        return 1
    try:
        written = build(out)
    except Exception as exc:  # noqa: BLE001 - one clear line for the caller (the resolver puts it in the skip reason)
        print(f"test data: building {out} from the hub failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"test data: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
