"""The types one training run shares: its settings (LoopConfig), what it reports (StepLog, LoopResult), the frozen
context every helper takes instead of a long list of arguments (TrainContext), and the mutable place in the run
that a checkpoint saves (RunState)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sentimentops.steps.core.buckets import Batch, collate, shard_batch
from sentimentops.steps.train.distributed import Dist


@dataclass
class LoopConfig:
    epochs: int = 1
    batch_size: int = 32  # per process; 0 = by data size (batch_size_for)
    learning_rate: float = 5e-5  # the learning rate at reference_batch_size
    reference_batch_size: int = 32  # the LR rule scales learning_rate from here to the global batch size
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 42
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (auto: bf16 where supported, else fp16 on CUDA, fp32 on CPU)
    length_multiple: int = 64  # bucket padded lengths to this multiple (cuDNN attention re-plans per shape)
    max_length: int = 512
    compile: str = "auto"  # auto | on | off
    # dynamic: one graph for every length bucket; static: one graph per (batch, padded length) shape (at most
    # 512 / length_multiple + a few), each compiled before the first step by the shape warm-up below
    compile_shapes: str = "dynamic"
    log_every: int = 20  # steps between host syncs for logging
    checkpoint_every: int = 0  # steps; 0 = only at epoch end
    max_steps: int = 0  # 0 = no limit; a limit stops the run early but keeps the full-length LR schedule
    freeze_embeddings: bool = False  # embeddings keep their pretrained weights (no gradient, no optimizer state)
    freeze_layers: int = 0  # the lowest N transformer layers keep theirs
    # additions beyond the agreed API (all optional):
    lr_scaling: str = "sqrt"  # sqrt | linear | none: rule from reference_batch_size to the global batch size
    max_grad_norm: float = 1.0  # 0 = no clipping (1.0 is the transformers Trainer default)
    attention: str = "sdpa"  # sdpa | eager | keep (keep: whatever the model was loaded with)
    sdpa_backend: str = "auto"  # auto (timed on CUDA) | default | efficient | cudnn | flash | math
    # on CPU there is no per-shape plan to amortise: multiple 8 pads IMDB by 1% instead of 10% at 64
    cpu_length_multiple: int = 8
    # when the loop compiles (CUDA): every shape is compiled and planned before the first step, so finer buckets
    # cost no mid-run re-plans; on an H100 at batch 256 multiple 32 ran 3486 against 3371 samples/s (dynamic)
    # and 3625 against 3512 (static): 5.6% padding instead of 10.5% (benchmarks/results/train_gpu_run3.json)
    compiled_length_multiple: int = 32
    peak_flops: float | None = None  # per-device bf16 peak for MFU; None = sentimentops.steps.train.perf.known_peak_flops


@dataclass
class StepLog:
    step: int
    epoch: float
    loss: float
    learning_rate: float
    samples_per_s: float
    tokens_per_s: float
    mfu: float | None


@dataclass
class LoopResult:
    steps: int
    epochs_completed: int
    final_loss: float
    samples_per_s: float
    tokens_per_s: float
    mfu: float | None
    train_seconds: float
    resumed_from_step: int
    device: str
    precision: str
    world_size: int
    sdpa_backend: str = "default"
    compiled: bool = False
    learning_rate: float = 0.0  # the peak learning rate after scaling
    batch_size: int = 0  # per process, as used (LoopConfig.batch_size=0 resolves through batch_size_for)
    sdpa_timings_ms: dict[str, float] = field(default_factory=dict)  # fwd+bwd per candidate kernel, if timed



@dataclass(frozen=True)
class TrainContext:
    """Everything the loop's helpers share for one run. Frozen: a later choice (the attention kernel, the DDP
    wrapper) makes a new context with dataclasses.replace, so no helper can change what another one sees."""

    cfg: LoopConfig  # batch_size already resolved (never 0 here)
    model: nn.Module  # the weights being trained and checkpointed
    net: nn.Module  # what the steps call: the model itself, or its DistributedDataParallel wrapper
    device: torch.device
    precision: str  # resolved: bf16 | fp16 | fp32
    ddp: Dist
    pad_id: int
    multiple: int  # padded lengths round up to this
    input_ids: list[list[int]]
    labels: np.ndarray
    lengths: np.ndarray
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    global_batch: int
    backend: str = "default"  # the SDPA kernel every step runs under

    def width(self, group: np.ndarray) -> int:
        """The padded length of a batch of these rows."""
        return min(-(-int(max(len(self.input_ids[i]) for i in group)) // self.multiple) * self.multiple,
                   self.cfg.max_length)

    def batch_rows(self, group: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch."""
        return shard_batch(group, self.ddp.rank, self.ddp.world_size)

    def batch(self, group: np.ndarray, *, pin: bool = False) -> Batch:
        """This rank's share of a global batch, padded and collated (in pinned memory with pin=True)."""
        return collate(self.input_ids, self.batch_rows(group), pad_id=self.pad_id,
                       multiple=self.multiple, max_length=self.cfg.max_length, labels=self.labels, pin=pin)


@dataclass
class RunState:
    step: int = 0  # optimizer steps done in total
    epoch: int = 0  # the epoch in progress
    batch: int = 0  # batches of that epoch done
    resumed_from: int = 0
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0
    last_loss: float = float("nan")
    logs: list[StepLog] = field(default_factory=list)
