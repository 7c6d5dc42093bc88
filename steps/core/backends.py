"""Tokenizer and model backends of the predictor: ONNX Runtime (the CPU fast path, int8 or fp32) and torch (GPU).

Only numpy, tokenizers and onnxruntime are imported at module level: the serve image has no torch, so torch and
transformers are imported inside TorchBackend alone. sentimentops.steps.evaluate.onnx_export scores its accuracy check
through these same classes, and evaluate tokenizes through TextEncoder, so the accuracy bound, the gated accuracy and
the drift reference are measured on exactly what is served.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sentimentops.steps.core.contract import MAX_TOKENS, content_share, keep_head_tail

BACKENDS = ("onnx-int8", "onnx-fp32", "torch")


@dataclass(frozen=True)
class Encoded:
    """One tokenized instance: ids after truncation, whether it was cut, and its `content` drift feature
    (contract.content_share, computed here so no raw text has to be kept)."""

    ids: list[int]
    truncated: bool
    content: float

    @property
    def length(self) -> int:
        return len(self.ids)


class TextEncoder:
    """The model folder's fast tokenizer (tokenizer.json) without transformers; an instance over max_tokens is cut by
    the contract's head + tail rule (contract.keep_head_tail), the rule training cuts by."""

    def __init__(self, model_dir: Path, max_tokens: int = MAX_TOKENS):
        from tokenizers import Tokenizer

        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir}: no tokenizer.json (save the model with a fast tokenizer)")
        config = _read_json(Path(model_dir) / "config.json")
        self.max_tokens = min(max_tokens, int(config.get("max_position_embeddings", max_tokens)))
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()  # the cut is the contract's head + tail rule, applied in encode()
        pad = config.get("pad_token_id")
        self.pad_id = int(pad) if pad is not None else int(self.tokenizer.token_to_id("[PAD]") or 0)

    def encode(self, texts: list[str]) -> list[Encoded]:
        encodings = self.tokenizer.encode_batch(texts) if len(texts) > 1 else [self.tokenizer.encode(texts[0])]
        return [self._cut(enc.ids, enc.tokens, enc.special_tokens_mask) for enc in encodings]

    def _cut(self, ids: list[int], tokens: list[str], special: list[int]) -> Encoded:
        """An instance over the limit keeps its head and tail (contract.keep_head_tail: [CLS] and [SEP] stay), and
        its `content` feature is computed on the kept tokens, the ones the model sees."""
        if len(ids) <= self.max_tokens:
            return Encoded(ids=list(ids), truncated=False, content=content_share(tokens, special))
        m = self.max_tokens
        return Encoded(ids=keep_head_tail(ids, m), truncated=True,
                       content=content_share(keep_head_tail(tokens, m), keep_head_tail(special, m)))

    def pad(self, batch: list[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pads to the batch's longest instance (CPU kernels need no shape buckets; grouping by length in
        the batcher is what keeps this padding small)."""
        width = max(e.length for e in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, enc in enumerate(batch):
            ids[row, : enc.length] = enc.ids
            mask[row, : enc.length] = 1
        return ids, mask


def positive_index(model_dir: Path) -> int:
    """Which logit is `positive` (config.json id2label), 1 by default."""
    id2label = _read_json(Path(model_dir) / "config.json").get("id2label") or {}
    for key, label in id2label.items():
        if str(label).lower() in ("positive", "pos", "label_1"):
            return int(key)
    return 1


def softmax_positive(logits: np.ndarray, index: int) -> np.ndarray:
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp[:, index] / exp.sum(axis=1)).astype(np.float64)


class OnnxBackend:
    """ONNX Runtime on CPU: one session (thread-safe), called concurrently by the batcher's workers, each call
    with `threads` intra-op threads (1 by default: one worker per core)."""

    def __init__(self, onnx_path: Path, model_dir: Path, name: str, threads: int | None = None,
                 spin: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between ops by default: on a shared node (or under a CPU limit) spinning threads burn the
        # quota that the next batch needs; measured here under load, 1x300 tokens took 130 ms without spinning,
        # 382 with. The solo session (one lone request on an idle server) spins: its helper thread would otherwise
        # sleep and be woken at every op (53 tokens on 2 threads: 21 ms without spinning, 12-14 ms with; it then
        # spins ~45 ms of one core after the call, while nothing else is running).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.index = positive_index(model_dir)
        self.name = name

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        (logits,) = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.inputs})
        return softmax_positive(logits, self.index)


class TorchBackend:
    """transformers + torch: the GPU path (bf16 on CUDA) and the fallback where no ONNX export exists."""

    name = "torch"

    def __init__(self, model_dir: Path, device: str = "auto", threads: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype).to(self.device)
        self.model.eval()
        self.index = positive_index(model_dir)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            logits = self.model(input_ids=torch.from_numpy(ids).to(self.device),
                                attention_mask=torch.from_numpy(mask).to(self.device)).logits
        return softmax_positive(logits.float().cpu().numpy(), self.index)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
