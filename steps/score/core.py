"""Batch scoring's pure core: which rows, in which shards, through which model, into which file.

Inputs are parquet, CSV or JSONL files: one file, every such file of a folder, or every such object under a gs://
prefix, in name order. A *plan* splits their rows into contiguous ranges, shard i holding global rows
[i*T/n, (i+1)*T/n): the same inputs and shard count give the same shards, and the parts concatenated in shard
order are the input order. The plan resolves the model once (an alias becomes its concrete version), so every
shard scores with the same version even if the alias moves while the fan-out runs.

Scoring goes through the predictor's own pieces (steps/core/backends.py): its TextEncoder (the contract's head +
tail cut at 512 tokens) and, on a CPU, the registered ONNX export through OnnxBackend (int8 when it passed its
accuracy bound at registration, else fp32, as the CPU predictor chooses); on a GPU, the model through torch in
bf16 and core.scoring.predict_proba's length-sorted batches (the fast path evaluate uses). Every answer is the one
the predictor would give for the same text.

Files (inputs, parts, the output) are read and written by steps/score/files.py.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sentimentops.steps.core.backends import OnnxBackend, TextEncoder, TorchBackend
from sentimentops.steps.core.contract import LABELS, MAX_TOKENS, choose_backend, labels_of, read_model_folder
from sentimentops.steps.core.errors import DataError, UsageError
from sentimentops.steps.core.logs import Progress, get_logger
from sentimentops.steps.core.psi import RECORD_DECIMALS
from sentimentops.steps.score.files import list_inputs, read_part, read_table

log = get_logger("sentimentops.score")

ROW_COLUMN = "row"  # the id written when the input has no id column: the row's number across all inputs
LABEL, PROBABILITY, MODEL_NAME, MODEL_VERSION = "label", "probability", "model_name", "model_version"
UNVERSIONED = "unversioned"  # a model folder scored without a registry version (as `serve --model-dir` reports)
# Texts tokenized and scored per step of the progress bar on the GPU path: predict_proba sorts each chunk by
# length itself, and a chunk bounds the tokens held at once.
GPU_CHUNK = 8192


# ---- the plan ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    file: str
    start: int  # first row of the file (0-based)
    stop: int  # one past the last


@dataclass(frozen=True)
class Shard:
    """One pod's work: contiguous row ranges; `offset` is the global number of its first row."""

    index: int
    count: int
    offset: int
    rows: int
    ranges: tuple[Range, ...]
    id_column: str = ""  # the input's id column when every file has it; "" -> global row numbers (ROW_COLUMN)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str | dict) -> Shard:
        try:
            data = json.loads(text) if isinstance(text, str) else text
            return cls(int(data["index"]), int(data["count"]), int(data["offset"]), int(data["rows"]),
                       tuple(Range(str(r["file"]), int(r["start"]), int(r["stop"])) for r in data["ranges"]),
                       str(data.get("id_column") or ""))
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--shard: not a shard descriptor of `score plan` ({err}): {str(text)[:200]}") from err

    @property
    def part_name(self) -> str:
        return f"part-{self.index:05d}-of-{self.count:05d}.parquet"


# Rows per block: a CPU batch never mixes rows of two blocks, and a shard starts at a block boundary, so a review's
# batch-mates are the same however the input is sharded. They matter: the int8 export quantizes activations with a
# scale computed over the whole batch tensor (ONNX Runtime's DynamicQuantizeLinear), so a review scored beside other
# reviews gets another probability (up to 0.15 apart on the IMDB sample, one pass against 3 shards, before blocks).
BLOCK = 64


def plan_shards(files: Sequence[tuple[str, int]], shards: int, id_column: str = "") -> list[Shard]:
    """(file, rows) in input order -> at most `shards` shards of nearly equal size (none empty), each starting at a
    multiple of BLOCK rows."""
    if shards < 1:
        raise UsageError(f"--shards must be at least 1, got {shards}")
    total = sum(rows for _, rows in files)
    blocks = max(1, -(-total // BLOCK))
    count = max(1, min(shards, blocks))
    bounds = [min(total, (i * blocks // count) * BLOCK) for i in range(count)] + [total]
    starts, acc = [], 0
    for _, rows in files:
        starts.append(acc)
        acc += rows
    out = []
    for i in range(count):
        lo, hi = bounds[i], bounds[i + 1]
        ranges = tuple(Range(f, max(lo, s) - s, min(hi, s + n) - s)
                       for (f, n), s in zip(files, starts, strict=True) if max(lo, s) < min(hi, s + n))
        out.append(Shard(i, count, lo, hi - lo, ranges, id_column))
    return out


def plan(location: str, shards: int, text_column: str, id_column: str) -> list[Shard]:
    """Reads every input once (a bad one fails here, before any pod starts) and splits its rows into shards."""
    sized, have_ids = [], bool(id_column)
    for file in list_inputs(location):
        frame = read_table(file, text_column)
        sized.append((file, len(frame)))
        have_ids = have_ids and id_column in frame.columns
    if id_column and not have_ids:
        log.info("not every input has an %r column: rows are identified by their number (%r)", id_column,
                 ROW_COLUMN)
    return plan_shards(sized, shards, id_column if have_ids else "")


# ---- the model ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """What scores: a registered version (`models:/name/N`, never an alias) or a model folder."""

    name: str
    version: str
    uri: str  # models:/name/N, or the folder's path

    @property
    def registered(self) -> bool:
        return self.uri.startswith("models:/")


def resolve_model(settings: Any, uri: str | None = None, version: str | None = None,
                  folder: Path | None = None) -> ModelRef:
    """The one resolution of a run: an alias becomes its concrete version now (the shards then use that)."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise DataError(f"--model-dir {folder}: no such folder")
        return ModelRef(settings.registered_model, version or UNVERSIONED, str(Path(folder).resolve()))
    from sentimentops.steps.core.tracking import registered_version

    uri = f"models:/{settings.registered_model}/{version}" if version else uri
    name, number, _ = registered_version(settings, uri or "")
    log.info("model %s is version %s", uri, number)
    return ModelRef(name, number, f"models:/{name}/{number}")


def model_folder(settings: Any, ref: ModelRef) -> Path:
    """A local folder for `ref`: the folder itself, or the registered version downloaded once into the home."""
    if not ref.registered:
        return Path(ref.uri)
    from sentimentops.steps.core.tracking import download_model

    dest = Path(settings.home) / "scoring-cache" / f"{ref.name}-{ref.version}"
    return download_model(settings, ref.uri, dest).root


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # the CPU scoring image may hold no torch: the ONNX export scores there
        return False
    return bool(torch.cuda.is_available())


class Scorer:
    """P(positive) for texts through the chosen backend, with a progress bar (log lines in a pod)."""

    def __init__(self, folder: Path, backend: str = "auto", threads: int = 0, batch_size: int = 0):
        self.folder = read_model_folder(folder)
        self.gpu = cuda_available()
        self.backend_name = choose_backend(read_model_folder(folder), backend, self.gpu)
        self.encoder = TextEncoder(self.folder.model_dir, MAX_TOKENS)
        self.threads = threads or len(os.sched_getaffinity(0))
        if self.backend_name.startswith("onnx"):
            onnx = self.folder.onnx_model
            if onnx is None:
                raise DataError(f"{folder}: backend {self.backend_name} asked for, but the model has no ONNX export")
            # One session on every core of the pod: batch scoring has no concurrent requests to spread over workers.
            self.backend: OnnxBackend | TorchBackend = OnnxBackend(onnx, self.folder.model_dir, self.backend_name,
                                                                    threads=self.threads)
        elif self.backend_name == "torch":
            self.backend = TorchBackend(self.folder.model_dir, threads=threads or None)
        else:
            raise UsageError(f"backend must be auto, onnx-int8, onnx-fp32 or torch, got {backend!r}")
        on_gpu = isinstance(self.backend, TorchBackend) and self.backend.device.type == "cuda"
        self.batch_size = batch_size or (256 if on_gpu else 16)
        self.on_gpu = on_gpu

    def score(self, texts: Sequence[str], desc: str = "score", first_row: int = 0) -> np.ndarray:
        """P(positive) per text; `first_row` is the global number of texts[0] (a shard's offset), which places the
        rows in their BLOCKs."""
        if self.on_gpu:
            return self._score_gpu(texts, desc)
        encoded = self.encoder.encode(list(texts)) if texts else []
        tokens = [e.length for e in encoded]
        # Longest first within each BLOCK: the padding per batch stays small, and a batch never crosses a block (see
        # BLOCK). Progress in tokens, not reviews: time per token is nearly constant, time per review is not.
        order = np.array(sorted(range(len(encoded)), key=lambda i: ((first_row + i) // BLOCK, -tokens[i], i)),
                         dtype=np.int64)
        cuts = [0] + [k for k in range(1, len(order) + 1)
                      if k == len(order) or (first_row + order[k]) // BLOCK != (first_row + order[k - 1]) // BLOCK]
        probs = np.zeros(len(encoded), dtype=np.float64)
        log.info("%s: %d reviews, %d tokens, %s on %d threads", desc, len(encoded), sum(tokens), self.backend_name,
                 self.threads)
        with Progress(total=sum(tokens), desc=desc, unit="token", log=log) as bar:
            for lo, hi in itertools.pairwise(cuts):
                for start in range(lo, hi, self.batch_size):
                    rows = order[start : min(start + self.batch_size, hi)]
                    probs[rows] = self.backend(*self.encoder.pad([encoded[i] for i in rows]))
                    bar.update(int(sum(tokens[i] for i in rows)))
        return probs

    def _score_gpu(self, texts: Sequence[str], desc: str) -> np.ndarray:
        from sentimentops.steps.core.scoring import predict_proba

        assert isinstance(self.backend, TorchBackend)
        probs = np.zeros(len(texts), dtype=np.float64)
        log.info("%s: %d reviews on %s (bf16)", desc, len(texts), self.backend.device)
        with Progress(total=len(texts), desc=desc, unit="review", log=log) as bar:
            for start in range(0, len(texts), GPU_CHUNK):
                chunk = list(texts[start : start + GPU_CHUNK])
                ids = [e.ids for e in self.encoder.encode(chunk)]
                probs[start : start + len(chunk)] = predict_proba(
                    self.backend.model, ids, pad_id=self.encoder.pad_id, batch_size=self.batch_size,
                    device=self.backend.device, max_length=MAX_TOKENS)
                bar.update(len(chunk))
        return probs


# ---- one shard ---------------------------------------------------------------------------------------------------
def shard_rows(shard: Shard, text_column: str) -> tuple[str, list[Any], list[str]]:
    """(id column name, ids, texts) of a shard's rows, in input order. Rows without text are a DataError."""
    ids: list[Any] = []
    texts: list[str] = []
    for r in shard.ranges:
        frame = read_table(r.file, text_column).iloc[r.start : r.stop]
        if len(frame) != r.stop - r.start:
            raise DataError(f"{r.file}: rows {r.start}-{r.stop} asked for, the file has {r.start + len(frame)} "
                            "(did the input change after `score plan`?)")
        column = frame[text_column]
        bad = [r.start + i for i, t in enumerate(column) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise DataError(f"{r.file}: {len(bad)} row(s) without text in {text_column!r} (rows "
                            f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}, counted from 0)")
        texts += column.tolist()
        if shard.id_column:
            ids += frame[shard.id_column].tolist()
        else:
            ids += list(range(shard.offset + len(ids), shard.offset + len(ids) + len(frame)))
    return shard.id_column or ROW_COLUMN, ids, texts


def results_frame(id_name: str, ids: Sequence[Any], probs: np.ndarray, ref: ModelRef) -> Any:
    import pandas as pd

    return pd.DataFrame({id_name: list(ids), LABEL: labels_of(probs),
                         PROBABILITY: np.round(probs.astype(np.float64), RECORD_DECIMALS),
                         MODEL_NAME: ref.name, MODEL_VERSION: ref.version})


def score_shard(shard: Shard, scorer: Scorer, ref: ModelRef, text_column: str) -> Any:
    id_name, ids, texts = shard_rows(shard, text_column)
    probs = scorer.score(texts, desc=f"shard {shard.index + 1}/{shard.count}", first_row=shard.offset)
    return results_frame(id_name, ids, probs, ref)


# ---- parts -------------------------------------------------------------------------------------------------------
def parts_location(output: str) -> str:
    """Where the shards write their parts, beside the final output (a folder or prefix named after it)."""
    return f"{output.rstrip('/')}.parts"


def part_location(output: str, shard: Shard) -> str:
    return f"{parts_location(output)}/{shard.part_name}"


def join_parts(output: str, shards: Sequence[Shard]) -> Any:
    """The parts in shard order (= input order), checked against the plan's row counts."""
    import pandas as pd

    frames = []
    for shard in shards:
        frame = read_part(part_location(output, shard))
        if len(frame) != shard.rows:
            raise DataError(f"{part_location(output, shard)}: {len(frame)} rows, the plan says {shard.rows}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summary(frame: Any, output: str) -> dict:
    counts = frame[LABEL].value_counts()
    versions = sorted(map(str, frame[MODEL_VERSION].unique()))
    return {"output": output, "rows": len(frame), "model_name": str(frame[MODEL_NAME].iloc[0]),
            "model_version": versions[0] if len(versions) == 1 else versions,
            "labels": {label: int(counts.get(label, 0)) for label in LABELS}}
