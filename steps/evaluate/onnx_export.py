"""ONNX export for the CPU fast path, run by `register`: fp32 export -> ONNX Runtime transformer fusion -> dynamic
int8 quantization -> the accuracy check that decides which of the two is served.

int8 is kept only when its accuracy on the evaluation set is at most `max_drop_points` (default 0.5 percentage
points) below the fp32 export's; otherwise the fp32 export is kept and the refusal is recorded. The result is one
folder: `model.onnx` (the accepted precision) + `export.json` (precision, both accuracies, the drop, the bound, the
evaluation set and its row count). Accuracy is scored through sentimentops.steps.core.backends, the code the predictor runs.

    CLI: python -m sentimentops.steps.register.onnx_export --model DIR --eval-set test.parquet --out DIR
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.contract import (
    EXPORT_REPORT_FILE,
    MAX_TOKENS,
    ONNX_MODEL_FILE,
    ExportReport,
    class_ids_of,
)
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.logs import emit

# The folder's layout (ONNX_MODEL_FILE + EXPORT_REPORT_FILE) and ExportReport are the contract's: the predictor
# reads them through contract.ModelFolder without importing this stage.
OPSET = 17


class ExportSettings(CommonSettings):
    section: ClassVar[str] = "export"
    enabled: bool = Field(True, description="Export ONNX at registration (the CPU serving fast path).")
    max_drop_points: float = Field(0.5, description="Refuse int8 when its accuracy is more than this many "
                                                    "percentage points below fp32's.")
    eval_set: Path | None = Field(None, description="Parquet with text/label for the accuracy check; default: "
                                                    "the test split of the dataset the model was trained on.")
    eval_rows: int = Field(1000, description="At most this many rows of the evaluation set (stratified head).")
    max_tokens: int = Field(MAX_TOKENS, description="Truncation for the check: what the predictor serves.")


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


def score(onnx_path: Path, model_dir: Path, texts: list[str], max_tokens: int, batch_size: int = 16) -> np.ndarray:
    """P(positive) per text through the serving backend, longest first in batches (little padding)."""
    from sentimentops.steps.core.backends import OnnxBackend, TextEncoder

    encoder = TextEncoder(model_dir, max_tokens)
    backend = OnnxBackend(onnx_path, model_dir, "check")
    encoded = encoder.encode(texts)
    order = np.argsort([-e.length for e in encoded], kind="stable")
    probs = np.zeros(len(texts))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        probs[rows] = backend(*encoder.pad([encoded[i] for i in rows]))
    return probs


def int8_accepted(accuracy_fp32: float, accuracy_int8: float, max_drop_points: float) -> tuple[bool, float]:
    """(int8 kept?, drop in percentage points): kept when fp32 - int8 <= the bound (an int8 gain always passes)."""
    drop = round((accuracy_fp32 - accuracy_int8) * 100, 4)
    return drop <= max_drop_points, drop


def load_eval_set(path: Path, rows: int) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_parquet(path, columns=["text", "label"])
    if len(frame) > rows:  # keep the class balance: the same number of rows per label, in file order
        frame = frame.groupby("label", group_keys=False).head(rows // frame["label"].nunique())
    return frame["text"].astype(str).tolist(), frame["label"].astype(int).to_numpy()


def export_and_check(model_dir: Path, out: Path, settings: ExportSettings,
                     eval_set: Path | None = None) -> ExportReport:
    start = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    eval_set = eval_set or settings.eval_set
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        raw, fp32, int8 = Path(tmp) / "raw.onnx", Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_fp32(model_dir, raw)
        fused = optimize(raw, fp32, model_dir)
        quantize_int8(fp32, int8)
        if eval_set is None or not Path(eval_set).is_file():
            # Without an evaluation set the bound cannot be checked: int8 is refused, never assumed.
            report = ExportReport("fp32", None, None, None, settings.max_drop_points, False, str(eval_set or ""), 0,
                                  0.0, note="no evaluation set: int8 not measured, fp32 kept")
        else:
            texts, labels = load_eval_set(Path(eval_set), settings.eval_rows)
            acc = {name: float((class_ids_of(score(path, model_dir, texts, settings.max_tokens)) == labels).mean())
                   for name, path in (("fp32", fp32), ("int8", int8))}
            accepted, drop = int8_accepted(acc["fp32"], acc["int8"], settings.max_drop_points)
            report = ExportReport("int8" if accepted else "fp32", acc["fp32"], acc["int8"], drop,
                                  settings.max_drop_points, accepted, str(eval_set), len(labels), 0.0,
                                  note=f"fused: {fused}" + ("" if accepted else
                                                            f"; int8 refused: drop {drop} > {settings.max_drop_points}"))
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        shutil.copyfile(int8 if report.precision == "int8" else fp32, out / ONNX_MODEL_FILE)
    report.seconds = round(time.perf_counter() - start, 2)
    (out / EXPORT_REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face model folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder: model.onnx and export.json")


@stage_main("export")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(ExportSettings, argv, prog="python -m sentimentops.steps.register.onnx_export",
                                    description=__doc__, add_arguments=_arguments)
    if not args.model.is_dir():
        raise DataError(f"--model {args.model}: no such model folder")
    report = export_and_check(args.model, args.out, settings)
    emit(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
