"""The KServe predictor: loads a model folder (a Hugging Face folder, or the registered MLflow pyfunc folder with
its `model_dir`, `onnx` and `drift_reference` artifacts, read by core.contract.read_model_folder), picks the backend,
warms up, and answers through the dynamic batcher. docs/serving.md has the API contract; steps/serve/app.py the HTTP side.

Backend choice (`backend="auto"`): on a machine without a GPU, the ONNX export when the pyfunc folder has one
(int8 if it passed its accuracy bound at registration, else fp32: export.json says which); torch otherwise (and on
a GPU). The serve image holds no torch: there the ONNX artifact is required.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kserve
import numpy as np

from sentimentops.steps.core.backends import Encoded, OnnxBackend, TextEncoder, TorchBackend
from sentimentops.steps.core.contract import (
    MAX_TOKENS,
    choose_backend,
    label_of,
    read_model_folder,
)
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.psi import RECORD_DECIMALS
from sentimentops.steps.serve.batching import Batcher, BatchSettings
from sentimentops.steps.serve.errors import InputTooLong, InvalidInput, NotReady, PayloadTooLarge

log = get_logger("sentimentops.serve")
WARMUP_TEXT = "warm-up: the first inference allocates the session's buffers"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    run_id: str = ""


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 1_000_000   # 413 above: ~200 full IMDB reviews of JSON
    max_instances: int = 64              # 413 above: two full batches; larger jobs belong to batch scoring
    max_tokens: int = MAX_TOKENS         # DistilBERT's positions (core.contract)
    truncation: str = "truncate"         # truncate | reject (400 for an instance above max_tokens)


def gpu_present() -> bool:
    return Path("/dev/nvidiactl").exists()


def parse_instances(payload: Any) -> list[str]:
    """V1 body -> texts, or InvalidInput (400) with a message saying what is wrong."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('expected a JSON object with "instances": ["text", ...]')
    return check_texts(payload["instances"], '"instances"')


def check_texts(items: Any, what: str) -> list[str]:
    if not isinstance(items, list) or not items:
        raise InvalidInput(f"{what} must be a non-empty list")
    texts = []
    for i, item in enumerate(items):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise InvalidInput(f'instance {i}: expected a string or {{"text": "..."}}, got {type(text).__name__}')
        if not text.strip():
            raise InvalidInput(f"instance {i}: text is empty")
        texts.append(text)
    return texts


@dataclass
class ServeOptions:
    backend: str = "auto"            # auto | onnx-int8 | onnx-fp32 | torch
    threads: int | None = None       # intra-op threads per model call (ONNX default 1; torch: the cores)
    workers: int | None = None       # model-calling threads (ONNX default: one per core; torch: 1)
    limits: Limits = field(default_factory=Limits)
    batching: BatchSettings = field(default_factory=BatchSettings)
    log_text: bool = False


class SentimentModel(kserve.Model):
    def __init__(self, name: str, model_dir: Path, info: ModelInfo, options: ServeOptions | None = None,
                 metrics=None, records=None):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.info = info
        self.options = options or ServeOptions()
        self.metrics = metrics
        self.records = records
        self.ready = False
        self.backend_name = ""
        self.solo_backend: OnnxBackend | None = None
        self.batcher: Batcher | None = None

    # -- loading -------------------------------------------------------------------------------------------------
    def load(self) -> bool:
        """Loads encoder + backend, runs a warm-up inference, starts the batcher; ready only after all of it."""
        folder = read_model_folder(self.model_dir)
        if not self.info.run_id and folder.run_id:
            self.info = ModelInfo(self.info.name, self.info.version, folder.run_id)
        self.encoder = TextEncoder(folder.model_dir, self.options.limits.max_tokens)
        name = choose_backend(folder, self.options.backend, gpu_present())
        cores = len(os.sched_getaffinity(0))
        if name.startswith("onnx"):
            if folder.onnx_dir is None:
                raise FileNotFoundError(f"{self.model_dir}: backend {name} asked for, but no ONNX artifact")
            # one single-threaded call per core (steps/serve/batching.py says why); one session serves them all,
            # and a second one on all cores serves a lone request on an idle server (the solo path)
            workers = self.options.workers or cores
            threads = self.options.threads or max(1, cores // workers)
            onnx = folder.onnx_model
            if onnx is None:
                raise FileNotFoundError(f"{folder.onnx_dir}: backend {name} asked for, but no ONNX model file")
            self.backend = OnnxBackend(onnx, folder.model_dir, name, threads)
            if workers > 1 and threads < cores and self.options.batching.solo_max_tokens > 0:
                self.solo_backend = OnnxBackend(onnx, folder.model_dir, name, cores, spin=True)
        else:
            workers = self.options.workers or 1
            self.backend = TorchBackend(folder.model_dir, threads=self.options.threads)
        self.backend_name = name
        start = time.perf_counter()
        self._run(self.encoder.encode([WARMUP_TEXT]))
        if self.solo_backend is not None:
            self._run_solo(self.encoder.encode([WARMUP_TEXT]))
        if self.records is not None:  # the drift monitor's reference, beside the records it reads
            try:
                self.records.publish_reference(folder.drift_reference)
            except OSError as err:  # monitoring never takes the predictor out of service; the monitor waits
                log.error("drift reference not published: %s", err)
        batching = dataclasses.replace(self.options.batching, workers=workers)
        self.batcher = Batcher(self._run, batching, on_batch=self._observe,
                               on_depth=(self.metrics.queue_depth.set if self.metrics else None),
                               run_solo=self._run_solo if self.solo_backend is not None else None)
        self.batcher.start()
        if self.metrics is not None:
            self.metrics.set_model(self.info.name, self.info.version, self.info.run_id, name)
            self.metrics.model_ready.set(1)
        self.ready = True
        log.info("loaded %s version %s (%s, %d workers) from %s; warm-up %.0f ms", self.info.name,
                 self.info.version, name, workers, folder.model_dir, (time.perf_counter() - start) * 1000)
        return self.ready

    def stop(self) -> None:
        self.ready = False
        if self.metrics is not None:
            self.metrics.model_ready.set(0)
        if self.batcher is not None:
            self.batcher.stop()
        if self.records is not None:
            self.records.close()

    # -- inference -----------------------------------------------------------------------------------------------
    def _run(self, batch: list[Encoded]) -> np.ndarray:
        return self.backend(*self.encoder.pad(batch))

    def _run_solo(self, batch: list[Encoded]) -> np.ndarray:
        assert self.solo_backend is not None, "the batcher only calls the solo path when load() created it"
        return self.solo_backend(*self.encoder.pad(batch))

    def _observe(self, batch: list[Encoded], probs: np.ndarray) -> None:
        if self.metrics is not None:
            self.metrics.observe_batch([e.length for e in batch], sum(e.truncated for e in batch), probs)
        if self.records is not None:
            from sentimentops.steps.serve.records import record

            now = time.time()
            self.records.write([record(self.info.version, e.length, e.truncated, p, e.content, ts=now)
                                for e, p in zip(batch, probs, strict=True)])

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Limits, then tokens: too many instances -> 413; text with no tokens, or too long under `reject` -> 400."""
        limits = self.options.limits
        if len(texts) > limits.max_instances:
            raise PayloadTooLarge(f"{len(texts)} instances: at most {limits.max_instances} per request")
        encoded = self.encoder.encode(texts)
        for i, e in enumerate(encoded):
            if e.length <= 2:  # only [CLS] [SEP]: nothing but control or unknown characters
                raise InvalidInput(f"instance {i}: no text left after normalisation (control characters only?)")
            if e.truncated and limits.truncation == "reject":
                raise InputTooLong(f"instance {i}: more than {self.encoder.max_tokens} tokens (truncation is off)")
        return encoded

    def render(self, probs: np.ndarray) -> list[dict[str, Any]]:
        return [{"label": label_of(p), "probability": round(float(p), RECORD_DECIMALS),
                 "model_name": self.info.name, "model_version": self.info.version} for p in probs]

    def predict_texts(self, texts: list[str]) -> list[dict[str, Any]]:
        """Synchronous, unbatched (tests, scripts): the same encoder, backend and answer as the server."""
        if not self.ready:
            raise NotReady("the model is not loaded")
        encoded = self.encode(texts)
        probs = np.zeros(len(texts))
        order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
        for start in range(0, len(order), 16):
            rows = order[start : start + 16]
            probs[rows] = self._run([encoded[i] for i in rows])
        return self.render(probs)

    async def predict_async(self, texts: list[str]) -> np.ndarray:
        if not self.ready or self.batcher is None:
            raise NotReady("the model is not ready")
        return await self.batcher.submit(self.encode(texts))
