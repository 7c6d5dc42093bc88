"""How evaluate scores: the served tokens (the predictor's TextEncoder, contract.MAX_TOKENS, the head + tail cut) through
the served backend.

On a CPU the predictor serves the ONNX export, so evaluate builds it (fp32 fused + int8), scores the test rows with
both precisions (every core, a progress bar with the time left), lets the paired check choose the served one
(steps/evaluate/onnx_export.py) and reports the accuracy of that one: the number gated and printed is what users get,
and the int8 decision costs no extra pass. The export folder is an output of the step; register logs it with the
model. On a GPU (or `backend: torch`) the metrics come from torch (bf16 on CUDA, the GPU predictor's path) and the
export is still built and checked, on at most `export.eval_rows` rows, for the CPU predictor.

Measured on 2 AMD EPYC cores, 1,000 IMDB test reviews at 512 tokens: docs/measurements.md (Evaluate).
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sentimentops.steps.core.backends import Encoded, TextEncoder
from sentimentops.steps.core.contract import MAX_TOKENS, ONNX_MODEL_FILE, ExportReport, ModelFolder
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.evaluate.onnx_export import (
    ExportSettings,
    PairedCheck,
    export_candidates,
    export_report,
    paired_check,
    score_encoded,
    scoring_threads,
    write_export,
)

log = get_logger(__name__)


def encode(model_dir: Path, texts: list[str]) -> list[Encoded]:
    """The texts as the predictor tokenizes them: its TextEncoder, cut at contract.MAX_TOKENS (head + tail)."""
    return TextEncoder(model_dir, MAX_TOKENS).encode(texts)


def score_torch(model_dir: Path, encoded: list[Encoded], *, batch_size: int = 64, precision: str = "auto",
                num_threads: int = 0) -> np.ndarray:
    """P(positive) per instance on the serving tokens through transformers + torch (the GPU predictor's path)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from sentimentops.steps.core.scoring import predict_proba

    if num_threads:
        torch.set_num_threads(num_threads)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    pad_id = TextEncoder(model_dir, MAX_TOKENS).pad_id
    return predict_proba(model, [e.ids for e in encoded], pad_id=pad_id, batch_size=batch_size,
                         precision=precision, max_length=MAX_TOKENS)


def use_torch(backend: str) -> bool:
    """auto: torch where a GPU is, the ONNX export on a CPU (what each predictor serves)."""
    if backend != "auto":
        return backend == "torch"
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - evaluate's extra installs torch
        return False


@dataclass(frozen=True)
class Scored:
    probs: np.ndarray            # P(positive) per test row, from the served backend
    backend: str                 # onnx-int8 | onnx-fp32 | torch
    export: ExportReport | None  # the int8 decision and its evidence (None: export disabled)
    check: PairedCheck | None = None

    def int8_evidence(self) -> dict | None:
        """The decision and its evidence for metrics.json, the report and the card."""
        if self.export is None or self.check is None:
            return None
        c = self.check
        return {"decision": self.export.precision, "accuracy_fp32": c.accuracy_fp32, "accuracy_int8": c.accuracy_int8,
                "drop_points": c.drop_points, "agreement": c.agreement,
                "discordant": [c.fp32_only_right, c.int8_only_right], "p_value": c.p_value,
                "alpha": self.export.alpha, "min_agreement": self.export.min_agreement, "rows": self.export.eval_rows,
                "reason": c.reason}


def score_challenger(model_dir: Path, encoded: list[Encoded], labels: np.ndarray, *, backend: str,
                     export: ExportSettings, onnx_out: Path, torch_kwargs: dict) -> Scored:
    """Scores the challenger the way it will be served and writes its ONNX export (model.onnx + export.json) to
    `onnx_out`."""
    torch_first = use_torch(backend) or not export.enabled
    torch_probs = score_torch(model_dir, encoded, **torch_kwargs) if torch_first else None
    if not export.enabled:
        return Scored(torch_probs, "torch", None)  # type: ignore[arg-type]
    start = time.perf_counter()
    pad_id = TextEncoder(model_dir, MAX_TOKENS).pad_id
    rows = np.arange(len(encoded)) if not torch_first else stratified_head(labels, export.eval_rows)
    checked = [encoded[i] for i in rows]
    with tempfile.TemporaryDirectory(prefix="evaluate-onnx-") as tmp:
        cands = export_candidates(model_dir, Path(tmp))
        probs = {name: score_encoded(path, model_dir, checked, pad_id=pad_id, desc=f"evaluate: {name} export",
                                     threads=export.threads)
                 for name, path in (("int8", cands.int8), ("fp32", cands.fp32))}
        check = paired_check(labels[rows], probs["fp32"], probs["int8"], alpha=export.alpha,
                             min_agreement=export.min_agreement)
        report = export_report(check, export, eval_set=f"evaluate: the held-out test split ({len(rows)} rows)",
                               rows=len(rows), fused=cands.fused, seconds=round(time.perf_counter() - start, 2))
        write_export(onnx_out, cands.int8 if check.accepted else cands.fp32, report)
    log.info("evaluate: ONNX %s (%s)", report.backend, check.reason)
    if torch_probs is not None:
        return Scored(torch_probs, "torch", report, check)
    return Scored(probs["int8"] if check.accepted else probs["fp32"], report.backend, report, check)


def stratified_head(labels: np.ndarray, rows: int) -> np.ndarray:
    """At most `rows` row numbers, the same number per label, in order (the export check's sample on a GPU)."""
    if len(labels) <= rows:
        return np.arange(len(labels))
    classes = np.unique(labels)
    per = rows // len(classes)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per] for c in classes]))


def score_folder(folder: ModelFolder, encoded: list[Encoded], *, backend: str, threads: int,
                 torch_kwargs: dict) -> tuple[np.ndarray, str]:
    """A registered model (the champion) through the backend it is served with: its ONNX export on a CPU when it
    has one, else torch."""
    onnx = folder.onnx_model
    if onnx is not None and not use_torch(backend):
        report = folder.export_report
        name = report.backend if report is not None else "onnx"
        pad_id = TextEncoder(folder.model_dir, MAX_TOKENS).pad_id
        return score_encoded(onnx, folder.model_dir, encoded, pad_id=pad_id, desc=f"evaluate: champion {name}",
                             threads=threads), name
    return score_torch(folder.model_dir, encoded, **torch_kwargs), "torch"


@dataclass(frozen=True)
class Served:
    """The challenger as evaluate scored it (`backend`: the ONNX file it chose, or torch), for the behavioural suite
    and the explanations: texts through the predictor's TextEncoder, token rows through the same call."""

    encoder: TextEncoder
    call: Callable[[np.ndarray, np.ndarray], np.ndarray]  # core.backends: (ids, mask) -> P(positive)

    def predict(self, texts: list[str]) -> np.ndarray:
        encoded = self.encoder.encode(texts)
        out = np.zeros(len(encoded))
        order = np.argsort([-e.length for e in encoded], kind="stable")
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            out[rows] = self.call(*self.encoder.pad([encoded[i] for i in rows]))
        return out

    def explainer(self, **limits: int):  # -> core.explain.Explainer
        from sentimentops.steps.core.explain import Explainer, backend_scorer

        return Explainer(self.encoder.tokenizer, backend_scorer(self.call, self.encoder.pad_id),
                         max_tokens=self.encoder.max_tokens, **limits)


def served(model_dir: Path, onnx_dir: Path, backend: str, *, threads: int = 0) -> Served:
    encoder = TextEncoder(model_dir, MAX_TOKENS)
    if backend == "torch":
        from sentimentops.steps.core.backends import TorchBackend

        return Served(encoder, TorchBackend(model_dir, threads=threads or None))
    from sentimentops.steps.core.backends import OnnxBackend

    return Served(encoder, OnnxBackend(onnx_dir / ONNX_MODEL_FILE, model_dir, backend,
                                       threads=scoring_threads(threads)))
