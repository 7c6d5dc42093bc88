"""Throughput and model FLOPs utilisation (MFU), so every training run shows how close it runs to the hardware.

The FLOP count follows nanoGPT's `estimate_mfu` (after the PaLM paper, appendix B): a training step costs
6 * N FLOPs per token for the weight matmuls (2 forward, 4 backward) plus 12 * n_layer * d_model * T per token
for attention scores and the weighted sum (QK^T and AV, forward and backward) at sequence length T. Counted
over REAL tokens and each sequence's real length, so padding is never "useful" work. N counts only the weights
of Linear layers: an embedding lookup does no arithmetic. Scoring (forward only) is a third of that.

Only torch here: the GPU benchmark imports this module without the project installed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

# Dense bf16 matmul peaks MEASURED (not datasheet) with an 8192^3 bf16 product through PyTorch:
# H100 SXM 785 TFLOP/s (docs/measurements.md, GPU, 2026-11-27; datasheet 989),
# H200 788 (device KINDS.md, 2026-10-28).
# Datasheet only: A100 312. Matched by substring of torch.cuda.get_device_name().
KNOWN_BF16_PEAK_FLOPS: dict[str, float] = {"H100": 785e12, "H200": 788e12, "A100": 312e12}


def matmul_params(model: nn.Module) -> int:
    """Weights that take part in matmuls (nn.Linear weights; biases and embeddings do no FLOP-heavy work)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


@dataclass(frozen=True)
class FlopModel:
    """The shape numbers the FLOP estimate needs, read once from a model."""

    matmul_params: int
    n_layers: int
    d_model: int

    @classmethod
    def from_model(cls, model: nn.Module) -> FlopModel:
        cfg = getattr(model, "config", None)
        # DistilBERT names them n_layers/dim, BERT num_hidden_layers/hidden_size
        n_layers = getattr(cfg, "n_layers", None) or getattr(cfg, "num_hidden_layers", 0)
        d_model = getattr(cfg, "dim", None) or getattr(cfg, "hidden_size", 0)
        return cls(matmul_params(model), int(n_layers), int(d_model))

    def train_flops(self, seq_lengths: np.ndarray) -> float:
        """Useful FLOPs of one forward+backward over sequences of these real lengths."""
        lengths = np.asarray(seq_lengths, dtype=np.float64)
        attention = 12.0 * self.n_layers * self.d_model * float((lengths**2).sum())
        return 6.0 * self.matmul_params * float(lengths.sum()) + attention

    def forward_flops(self, seq_lengths: np.ndarray) -> float:
        """Useful FLOPs of one forward pass (scoring): a third of the training count."""
        return self.train_flops(seq_lengths) / 3.0


def known_peak_flops(device: torch.device | str) -> float | None:
    """bf16 dense peak for a known GPU (see KNOWN_BF16_PEAK_FLOPS), None on CPU or an unknown card."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in KNOWN_BF16_PEAK_FLOPS.items() if k in name), None)


def measure_matmul_peak(
    device: torch.device | str, *, n: int = 8192, dtype: torch.dtype = torch.bfloat16, iters: int = 10
) -> float:
    """FLOP/s of an n x n x n matmul on random data (zeros ran 13% faster on an H200: device METHOD.md),
    mean of `iters` products after 3 warm-ups, timed with CUDA events."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            a @ b
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        seconds = time.perf_counter() - t0
    return 2.0 * n**3 * iters / seconds


@dataclass
class Rates:
    samples_per_s: float
    tokens_per_s: float
    mfu: float | None


@dataclass
class ThroughputMeter:
    """Counts samples, real tokens and useful FLOPs between reads; the caller reads it only at points where it
    synchronises with the device anyway (log steps), so the meter adds no host-device sync of its own.
    `skip` early intervals (warm-up: cuDNN plans, compilation) are left out of the run's overall rate."""

    peak_flops: float | None = None
    skip: int = 1
    _t_last: float = field(default_factory=time.perf_counter)
    _samples: int = 0
    _tokens: int = 0
    _flops: float = 0.0
    _intervals: int = 0
    _total: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # seconds, samples, tokens, flops
    _all: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])

    def restart(self) -> None:
        """Starts the current interval now (after set-up work that should not count)."""
        self._t_last = time.perf_counter()

    def add(self, samples: int, tokens: int, flops: float) -> None:
        self._samples += samples
        self._tokens += tokens
        self._flops += flops

    def read(self) -> Rates:
        """Rates over the interval since the last read; call only after a device sync."""
        now = time.perf_counter()
        seconds = max(now - self._t_last, 1e-9)
        values = (seconds, self._samples, self._tokens, self._flops)
        self._all = [a + v for a, v in zip(self._all, values, strict=True)]
        if self._intervals >= self.skip:
            self._total = [a + v for a, v in zip(self._total, values, strict=True)]
        self._intervals += 1
        rates = self._rates(*values)
        self._t_last, self._samples, self._tokens, self._flops = now, 0, 0, 0.0
        return rates

    def overall(self) -> Rates:
        """Rates over the intervals after warm-up (over all intervals when there were too few)."""
        return self._rates(*(self._total if self._total[0] > 0 else self._all))

    @property
    def seconds(self) -> float:
        """Wall seconds over all read intervals, warm-up included."""
        return self._all[0]

    def _rates(self, seconds: float, samples: float, tokens: float, flops: float) -> Rates:
        if seconds <= 0:
            return Rates(0.0, 0.0, None)
        mfu = None if not self.peak_flops else flops / seconds / self.peak_flops
        return Rates(samples / seconds, tokens / seconds, mfu)
