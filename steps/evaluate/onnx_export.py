"""ONNX export for the CPU fast path: fp32 export -> ONNX Runtime transformer fusion -> dynamic int8 quantization
-> a paired comparison of the two on the same rows that decides which one is served.

evaluate runs it (it scores the test split through the export anyway, so the served model's accuracy and the int8
decision come from one pass); register logs the chosen folder with the model. int8 is refused only on evidence:
when a one-sided exact McNemar test on the rows only one precision gets right says int8 is worse (p < `alpha`), or
when the two disagree on more than 1 - `min_agreement` of the rows. An unpaired accuracy bound on a few hundred rows
refused int8 for a 0.6-point drop, three reviews, well inside the noise (issue 14, item 8). The result is one
folder: `model.onnx` (the accepted precision) + `export.json` (contract.ExportReport: the decision and its evidence).
Scoring goes through sentimentops.steps.core.backends, the code the predictor runs.

    CLI: python -m sentimentops.steps.evaluate.onnx_export --model DIR --eval-set test.parquet --out DIR
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from sentimentops.steps.core.backends import Encoded
from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.contract import (
    EXPORT_REPORT_FILE,
    MAX_TOKENS,
    ONNX_MODEL_FILE,
    ExportReport,
    class_ids_of,
)
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.logs import Progress, emit, get_logger

log = get_logger(__name__)

# The folder's layout (ONNX_MODEL_FILE + EXPORT_REPORT_FILE) and ExportReport are the contract's: the predictor
# reads them through contract.ModelFolder without importing this stage.
OPSET = 17


class ExportSettings(CommonSettings):
    section: ClassVar[str] = "export"
    enabled: bool = Field(True, description="Export ONNX (the CPU serving fast path).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Refuse int8 when the one-sided exact McNemar test on the "
                         "paired fp32/int8 answers says int8 is worse at this significance level.")
    min_agreement: float = Field(0.97, ge=0, le=1, description="Refuse int8 when fp32 and int8 give the same label "
                                 "on fewer than this share of the rows.")
    eval_set: Path | None = Field(None, description="Parquet with text/label for the check (the standalone CLI and "
                                  "benchmarks; evaluate checks on the test split it scores).")
    eval_rows: int = Field(1000, description="At most this many rows of --eval-set (stratified head).")
    max_tokens: int = Field(MAX_TOKENS, description="Truncation for the check: what the predictor serves.")
    threads: int = Field(0, ge=0, description="ONNX Runtime threads when scoring (0 = every core).")


def _heads_and_width(config: dict) -> tuple[int, int]:
    heads = config.get("n_heads") or config.get("num_attention_heads") or 12
    width = config.get("dim") or config.get("hidden_size") or 768
    return int(heads), int(width)


def export_fp32(model_dir: Path, path: Path) -> None:
    """TorchScript export with eager attention: ONNX Runtime's optimizer fuses that graph into its Attention,
    EmbedLayerNormalization and SkipLayerNormalization kernels (the SDPA graph of transformers 5 is not fused)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval()

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    sample = torch.ones(2, 16, dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    with torch.inference_mode():
        torch.onnx.export(Logits(model), (sample, sample), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes=axes)


def optimize(src: Path, dst: Path, model_dir: Path) -> dict:
    from onnxruntime.transformers import optimizer

    heads, width = _heads_and_width(json.loads((model_dir / "config.json").read_text()))
    model = optimizer.optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=width, opt_level=0)
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic quantization: int8 weights, activations quantized per batch at run time (no calibration set).
    Per-channel weight scales: on the fine-tuned MiniLM (IMDB sample test set, 1,000 reviews) per-tensor scales
    lost 2.8 accuracy points (84.9% -> 82.1%), per-channel 0.4 (84.5%)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


@dataclass(frozen=True)
class Candidates:
    fp32: Path
    int8: Path
    fused: dict


def export_candidates(model_dir: Path, folder: Path) -> Candidates:
    """The fused fp32 export and its int8 quantization, in `folder` (a scratch folder)."""
    raw, fp32, int8 = folder / "raw.onnx", folder / "fp32.onnx", folder / "int8.onnx"
    export_fp32(model_dir, raw)
    fused = optimize(raw, fp32, model_dir)
    quantize_int8(fp32, int8)
    raw.unlink()
    return Candidates(fp32=fp32, int8=int8, fused=fused)


def scoring_threads(threads: int = 0) -> int:
    """`threads`, or every core this process may run on (a pod's CPU set, not the node's)."""
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def score_encoded(onnx_path: Path, model_dir: Path, encoded: Sequence[Encoded], *, pad_id: int, desc: str,
                  threads: int = 0, batch_size: int = 16) -> np.ndarray:
    """P(positive) per instance through the serving backend, longest first in batches (little padding), on every
    core, with a progress bar (lines with the time left in pods)."""
    from sentimentops.steps.core.backends import OnnxBackend

    backend = OnnxBackend(onnx_path, model_dir, desc, threads=scoring_threads(threads))
    order = np.argsort([-e.length for e in encoded], kind="stable")
    probs = np.zeros(len(encoded))
    tokens = [e.length for e in encoded]
    # Progress in tokens, not reviews: the longest reviews go first, so a count of reviews would promise far too
    # long at the start; time per token is nearly constant.
    log.info("%s: %d reviews, %d tokens", desc, len(encoded), sum(tokens))
    with Progress(total=sum(tokens), desc=desc, unit="token", log=log) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = [encoded[i] for i in rows]
            width = max(tokens[i] for i in rows)
            ids = np.full((len(rows), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, e in enumerate(batch):
                ids[r, : e.length], mask[r, : e.length] = e.ids, 1
            probs[rows] = backend(ids, mask)
            bar.update(int(sum(tokens[i] for i in rows)))
    return probs


def mcnemar_p(fp32_only_right: int, int8_only_right: int) -> float:
    """One-sided exact McNemar p-value: the chance of `fp32_only_right` or more of the discordant rows going
    fp32's way if int8 were no worse (each discordant row a fair coin). 1.0 with no discordant rows."""
    n, b = fp32_only_right + int8_only_right, fp32_only_right
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n)


@dataclass(frozen=True)
class PairedCheck:
    accepted: bool
    accuracy_fp32: float
    accuracy_int8: float
    drop_points: float
    agreement: float
    fp32_only_right: int
    int8_only_right: int
    p_value: float
    reason: str


def paired_check(labels: np.ndarray, p_fp32: np.ndarray, p_int8: np.ndarray, *, alpha: float,
                 min_agreement: float) -> PairedCheck:
    """The pure core of the int8 decision, on the same rows scored by both precisions."""
    labels = np.asarray(labels)
    y32, y8 = class_ids_of(p_fp32), class_ids_of(p_int8)
    right32, right8 = y32 == labels, y8 == labels
    b, c = int((right32 & ~right8).sum()), int((right8 & ~right32).sum())
    acc32, acc8 = float(right32.mean()), float(right8.mean())
    agreement = float((y32 == y8).mean())
    p = mcnemar_p(b, c)
    evidence = (f"agreement {agreement:.4f} on {len(labels)} rows; discordant: fp32 only right {b}, int8 only "
                f"right {c}; one-sided exact McNemar p {p:.3g}")
    if p < alpha:
        accepted, reason = False, f"int8 refused: it answers worse ({evidence} < alpha {alpha})"
    elif agreement < min_agreement:
        accepted, reason = False, f"int8 refused: agreement below {min_agreement} ({evidence})"
    else:
        accepted, reason = True, f"int8 kept: no evidence it answers worse ({evidence}, alpha {alpha})"
    return PairedCheck(accepted, acc32, acc8, round((acc32 - acc8) * 100, 4), agreement, b, c, p, reason)


def export_report(check: PairedCheck | None, settings: ExportSettings, *, eval_set: str, rows: int,
                  fused: dict, seconds: float) -> ExportReport:
    if check is None:  # without rows to compare on, int8 is refused, never assumed
        return ExportReport("fp32", None, None, None, False, eval_set, 0, seconds,
                            note="no evaluation set: int8 not measured, fp32 kept", alpha=settings.alpha,
                            min_agreement=settings.min_agreement)
    return ExportReport("int8" if check.accepted else "fp32", check.accuracy_fp32, check.accuracy_int8,
                        check.drop_points, check.accepted, eval_set, rows, seconds,
                        note=f"{check.reason}; fused: {fused}", agreement=check.agreement,
                        fp32_only_right=check.fp32_only_right, int8_only_right=check.int8_only_right,
                        p_value=check.p_value, alpha=settings.alpha, min_agreement=settings.min_agreement)


def write_export(out: Path, chosen: Path, report: ExportReport) -> None:
    """`out` = model.onnx (the chosen precision) + export.json, replacing what was there."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile(chosen, out / ONNX_MODEL_FILE)
    (out / EXPORT_REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")


def load_eval_set(path: Path, rows: int) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_parquet(path, columns=["text", "label"])
    if len(frame) > rows:  # keep the class balance: the same number of rows per label, in file order
        frame = frame.groupby("label", group_keys=False).head(rows // frame["label"].nunique())
    return frame["text"].astype(str).tolist(), frame["label"].astype(int).to_numpy()


def export_and_check(model_dir: Path, out: Path, settings: ExportSettings,
                     eval_set: Path | None = None) -> ExportReport:
    """The standalone export (CLI, benchmarks, tests): candidates, the paired check on `eval_set`, the folder."""
    from sentimentops.steps.core.backends import TextEncoder

    start = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    eval_set = eval_set or settings.eval_set
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        cands = export_candidates(model_dir, Path(tmp))
        check, rows = None, 0
        if eval_set is not None and Path(eval_set).is_file():
            texts, labels = load_eval_set(Path(eval_set), settings.eval_rows)
            encoder = TextEncoder(model_dir, settings.max_tokens)
            encoded = encoder.encode(texts)
            probs = {name: score_encoded(path, model_dir, encoded, pad_id=encoder.pad_id, desc=f"export: {name}",
                                         threads=settings.threads)
                     for name, path in (("fp32", cands.fp32), ("int8", cands.int8))}
            check = paired_check(labels, probs["fp32"], probs["int8"], alpha=settings.alpha,
                                 min_agreement=settings.min_agreement)
            rows = len(labels)
        report = export_report(check, settings, eval_set=str(eval_set or ""), rows=rows, fused=cands.fused,
                               seconds=round(time.perf_counter() - start, 2))
        write_export(out, cands.int8 if report.int8_accepted else cands.fp32, report)
    return report


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face model folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder: model.onnx and export.json")


@stage_main("export")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(ExportSettings, argv, prog="python -m sentimentops.steps.evaluate.onnx_export",
                                    description=__doc__, add_arguments=_arguments)
    if not args.model.is_dir():
        raise DataError(f"--model {args.model}: no such model folder")
    report = export_and_check(args.model, args.out, settings)
    emit(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
