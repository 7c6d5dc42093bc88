"""Batch scoring: P(label==1) for tokenized reviews, fast on a GPU and exact on CPU.

Evaluate (and the drift reference) score with it, and the train step reports validation accuracy through it:
it lives in the core so that evaluate never imports the train package.
"""

from __future__ import annotations

import numpy as np
import torch

from sentimentops.steps.core.buckets import collate, plan_inference
from sentimentops.steps.core.contract import MAX_TOKENS
from sentimentops.steps.core.kernels import (
    autocast,
    compile_blocks,
    default_device,
    effective_multiple,
    resolve_precision,
    sdpa_context,
)

# Measured on an H100 (benchmarks/results/train_gpu_run3.json, DistilBERT-base, 25k test reviews, batch 256):
# compiled blocks score 11201 reviews/s against 8980 eager (22 us less per review), after a first pass that
# costs ~7 s more (compilation): it pays from about 300k reviews scored by one model object.
SCORE_COMPILE_BREAK_EVEN = 300_000


def predict_proba(model, input_ids: list[list[int]], *, pad_id: int, batch_size: int = 256, device=None,
                  precision: str = "auto", length_multiple: int = 64, max_length: int = MAX_TOKENS,
                  max_tokens: int | None = None, cpu_length_multiple: int = 8,
                  sdpa_backend: str = "default", compile: str = "auto") -> np.ndarray:
    """Batch scoring: inference_mode, length-sorted batches, bf16 on GPU; returns P(label==1) in the ORIGINAL
    order. Probabilities stay on the device until the end (no per-batch sync); max_tokens optionally lets
    batches of short reviews grow (see sentimentops.steps.core.buckets.plan_inference; on an H100 it was slower: 5053 against
    8691 reviews/s, since every batch then has a new shape). sdpa_backend pins the attention kernel on CUDA.
    compile (CUDA only; auto | off | dynamic | static) compiles the model's transformer blocks in place (they
    stay compiled; see compile_blocks): the first call per shape pays the compilation, so score a warm-up set of
    the same lengths first when timing. auto: dynamic from SCORE_COMPILE_BREAK_EVEN reviews on."""
    device = torch.device(device) if device is not None else default_device()
    precision = resolve_precision(precision, device)
    if compile not in ("auto", "off", "dynamic", "static"):
        raise ValueError(f"compile must be auto, off, dynamic or static, got {compile!r}")
    multiple = effective_multiple(length_multiple, device, cpu_length_multiple)
    if len(input_ids) == 0:
        return np.zeros(0, dtype=np.float32)
    lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
    was_training = model.training
    model.to(device)
    model.eval()
    order = plan_inference(lengths, batch_size, max_tokens=max_tokens)
    pin = device.type == "cuda"
    batches = [collate(input_ids, idx, pad_id=pad_id, multiple=multiple, max_length=max_length, pin=pin)
               for idx in order]
    outputs = []
    backend = sdpa_backend if device.type == "cuda" else "default"
    if compile == "auto":
        compile = "dynamic" if len(input_ids) >= SCORE_COMPILE_BREAK_EVEN else "off"
    compiled = compile != "off" and device.type == "cuda"
    if compiled:
        compile_blocks(model, compile)
    # no_grad under compilation: Dynamo traces inference_mode too, but no_grad is its well-trodden path
    grad_off = torch.no_grad() if compiled else torch.inference_mode()
    with grad_off, autocast(device, precision), sdpa_context(backend):
        for batch in batches:
            ids, mask, _ = batch.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            outputs.append(torch.softmax(logits.float(), dim=-1)[:, 1])
    probs_sorted = torch.cat(outputs).cpu().numpy()
    model.train(was_training)
    probs = np.empty(len(input_ids), dtype=np.float32)
    probs[np.concatenate(order)] = probs_sorted
    return probs
