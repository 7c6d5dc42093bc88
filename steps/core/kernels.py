"""Device choices shared by training and scoring: precision, autocast, length multiple, regional compilation and
the SDPA attention kernel (picked by timing the candidates on this model and batch).

Measurements behind each choice are in the comments (docs/measurements.md; GPU: one H100, DistilBERT-base, IMDB
lengths). Only torch and the core's bucketing here: sentimentops.steps.core.scoring (evaluate) and
sentimentops.steps.train both use it, and neither imports the other.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from sentimentops.steps.core.buckets import Batch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# CPU flags of native bf16 arithmetic. With them, bf16 autocast trained the MiniLM 1.2x faster at 128 tokens and
# 1.7x at 256 (Intel Xeon with AMX, issue 14); without them bf16 is emulated: 6 steps of the MiniLM at batch 16 ran
# 6.3x slower than fp32 on an AMD EPYC without them (benchmarks/train_recipes.py --precision-probe: 0.26 against 1.65
# reviews/s, both on shared cores), so `auto` keeps fp32 there.
CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_bf16_native(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16), from its flags; False where unknown."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return bool(CPU_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16, fp32 on other CPUs."""
    if precision not in ("auto", *_DTYPES):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if cpu_bf16_native() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = _DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def effective_multiple(multiple: int, device: torch.device, cpu_multiple: int) -> int:
    return min(multiple, cpu_multiple) if device.type == "cpu" else multiple



def compile_blocks(model: nn.Module, shapes: str = "dynamic") -> int:
    """Regional compilation: compiles each block of the repeated transformer layer stack in place. The blocks
    share code, so Dynamo compiles once and reuses it (PyTorch's regional compilation recipe), which keeps
    compile time a fraction of whole-model compilation. shapes="dynamic": one graph covers all length buckets;
    "static": one specialised graph per shape (bucketing bounds them; Dynamo's recompile limit is raised to
    fit). The model remembers the mode, so a second call with the same mode compiles nothing new."""
    if shapes not in ("dynamic", "static"):
        raise ValueError(f"compile shapes must be dynamic or static, got {shapes!r}")
    dynamic = shapes == "dynamic"
    if not dynamic:
        import torch._dynamo.config as dynamo_config

        for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch releases
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), STATIC_RECOMPILE_LIMIT))
    stacks = [m for m in model.modules()
              if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1]
    count = sum(len(s) for s in stacks) or 1
    if getattr(model, "_trainloop_compiled", None) == shapes:
        return count
    if not stacks:
        model.compile(dynamic=dynamic)
    for stack in stacks:
        for block in stack:
            block.compile(dynamic=dynamic)
    model._trainloop_compiled = shapes  # type: ignore[assignment]  # a marker attribute, read by the loop
    return count


# static graphs: 8 buckets of 64 (or 16 of 32) at the batch size, plus the smaller leftover batches, in training
# and in inference; the default limit (8) would silently fall back to eager past it
STATIC_RECOMPILE_LIMIT = 64


def _sdpa_backends() -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    return {"efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def sdpa_context(backend: str) -> contextlib.AbstractContextManager:
    if backend == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([_sdpa_backends()[backend]])  # type: ignore[list-item]


def choose_sdpa_backend(model: nn.Module, batch: Batch, device: torch.device, precision: str,
                        candidates: tuple[str, ...] = ("efficient", "cudnn", "flash")) -> tuple[str, dict]:
    """Times forward+backward of `batch` under each SDPA kernel and returns the fastest with all timings (ms).
    A kernel that cannot run these inputs (flash with a padding mask) is skipped. RNG state and gradients
    are restored, so the choice does not change the training run."""
    if device.type != "cuda":
        return "default", {}
    ids, mask, labels = batch.to(device)
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(device)
    timings: dict[str, float] = {}
    for name in candidates:
        try:
            with sdpa_context(name):
                for _ in range(2):
                    forward_backward(model, ids, mask, labels, device=device, precision=precision)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(3):
                    forward_backward(model, ids, mask, labels, device=device, precision=precision)
                end.record()
                end.synchronize()
            timings[name] = start.elapsed_time(end) / 3
        except RuntimeError:  # "No available kernel" for these inputs
            continue
        finally:
            model.zero_grad(set_to_none=True)
    torch.set_rng_state(cpu_rng)
    torch.cuda.set_rng_state(cuda_rng, device)
    return (min(timings, key=lambda name: timings[name]) if timings else "default"), timings


def forward_backward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, *,
                     device: torch.device, precision: str) -> torch.Tensor:
    """One forward and backward pass (loss in fp32), no optimizer step: kernel timing and shape warm-up."""
    with autocast(device, precision):
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    return loss

