"""The device-agnostic fine-tuning loop (one process, or one rank under torchrun).

What makes it fast on a GPU, with the measurement behind each choice (docs/measurements.md, GPU: one H100,
DistilBERT-base, IMDB train lengths; the guide recipe is 604 samples/s):
- bf16 autocast: no GradScaler, no loss-scale sync; fp16 is kept for GPUs without bf16.
- SDPA attention, its kernel picked by timing the candidates on this model and batch
  (sentimentops.steps.core.kernels.choose_sdpa_backend).
- length-bucketed batches (sentimentops.steps.core.buckets): 1923 samples/s at batch 64 against 319 with exact lengths.
- large batches, the learning rate scaled from `reference_batch_size` by the square-root rule for Adam
  (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"), linear warm-up
  (sentimentops.steps.train.optim).
- fused AdamW, batches prebuilt in pinned memory, non-blocking copies, the loss summed on the device and read
  only every `log_every` steps: together 2801 samples/s at batch 256 against 2348 with a sync every step.
On CPU it runs in fp32 without compilation and is deterministic given the seed (tests use one thread).

Around it: sentimentops.steps.train.checkpoint (save/resume), .distributed (torchrun), .perf (throughput, MFU),
.context (the types the helpers share); batch scoring is sentimentops.steps.core.scoring.predict_proba,
re-exported here until its last importers move.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sentimentops.steps.core.buckets import plan_batches
from sentimentops.steps.core.kernels import (
    autocast,
    choose_sdpa_backend,
    compile_blocks,
    default_device,
    effective_multiple,
    forward_backward,
    resolve_precision,
    sdpa_context,
)
from sentimentops.steps.core.logs import Progress, get_logger
from sentimentops.steps.core.scoring import predict_proba
from sentimentops.steps.train import checkpoint
from sentimentops.steps.train.checkpoint import CHECKPOINT_NAME
from sentimentops.steps.train.context import LoopConfig, LoopResult, RunState, StepLog, TrainContext
from sentimentops.steps.train.distributed import broadcast_from_main, setup_distributed
from sentimentops.steps.train.optim import (
    batch_size_for,
    build_optimizer,
    freeze,
    linear_warmup_decay,
    scaled_learning_rate,
)
from sentimentops.steps.train.perf import FlopModel, ThroughputMeter, known_peak_flops

__all__ = ["CHECKPOINT_NAME", "LoopConfig", "LoopResult", "StepLog", "predict_proba", "train"]
log = get_logger(__name__)

# Measured on an H100 (benchmarks/results/train_gpu_run1.json, DistilBERT-base, batch 256): regional
# compilation costs ~13 s once and raises 2589 to 3210 samples/s, saving ~1.9 s per 25k-review epoch; it pays
# from about 7 such epochs (175k samples) on.
COMPILE_BREAK_EVEN_SAMPLES = 175_000


def _compile_wanted(mode: str, device: torch.device, samples: int) -> bool:
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"compile must be auto, on or off, got {mode!r}")
    if mode == "auto":  # never on CPU: compilation there costs minutes on 2 cores and tests need none
        return device.type == "cuda" and samples >= COMPILE_BREAK_EVEN_SAMPLES
    return mode == "on"


def train(model, input_ids: list[list[int]], labels: list[int], cfg: LoopConfig, *, pad_id: int,
          device: torch.device | str | None = None, checkpoint_dir: Path | None = None,
          on_log: Callable[[StepLog], None] | None = None,
          on_epoch_end: Callable[[int, LoopResult], None] | None = None,
          progress: bool = True) -> LoopResult:
    """Fine-tunes `model` (a HF AutoModelForSequenceClassification) in place. input_ids are already tokenized
    and truncated to cfg.max_length (no padding). Resumes from checkpoint_dir if it holds a checkpoint (model,
    optimizer, scheduler, scaler, RNG, step, epoch), saves one every checkpoint_every steps, at each epoch end
    and when max_steps stops the run, atomically. Reports progress when progress=True (rank 0 only: a bar on a
    terminal, periodic log lines elsewhere). Under torchrun (WORLD_SIZE>1) joins the process group (nccl on
    CUDA, gloo on CPU), wraps in DDP, shards batches by rank; returns the same result on every rank; only rank 0
    writes checkpoints and calls callbacks."""
    device = torch.device(device) if device is not None else default_device()
    ddp = setup_distributed(device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.compile_shapes not in ("dynamic", "static"):
        raise ValueError(f"compile_shapes must be dynamic or static, got {cfg.compile_shapes!r}")
    if cfg.batch_size == 0:
        cfg = replace(cfg, batch_size=batch_size_for(len(input_ids), cfg.epochs, device, ddp.world_size))
    want_compile = _compile_wanted(cfg.compile, device, len(input_ids) * cfg.epochs)
    multiple = effective_multiple(cfg.compiled_length_multiple if want_compile and device.type == "cuda"
                                  else cfg.length_multiple, device, cfg.cpu_length_multiple)
    lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
    labels = np.asarray(labels, dtype=np.int64)
    if len(lengths) != len(labels):
        raise ValueError(f"{len(lengths)} inputs but {len(labels)} labels")
    if cfg.attention != "keep" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(cfg.attention)
    model.to(device)
    model.train()
    flops = FlopModel.from_model(model)

    plan0 = plan_batches(lengths, cfg.batch_size, multiple=multiple, max_length=cfg.max_length,
                         seed=cfg.seed, epoch=0, world_size=ddp.world_size)
    steps_per_epoch = len(plan0)  # the same every epoch: bucket sizes do not depend on the shuffle
    total_steps = steps_per_epoch * cfg.epochs
    global_batch = cfg.batch_size * ddp.world_size
    lr = scaled_learning_rate(cfg.learning_rate, cfg.reference_batch_size, global_batch, cfg.lr_scaling)
    freeze(model, embeddings=cfg.freeze_embeddings, layers=cfg.freeze_layers)
    optimizer = build_optimizer(model, lr, cfg.weight_decay, device)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, total_steps))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ctx = TrainContext(cfg=cfg, model=model, net=model, device=device, precision=precision, ddp=ddp, pad_id=pad_id,
                       multiple=multiple, input_ids=input_ids, labels=labels, lengths=lengths, optimizer=optimizer,
                       scheduler=scheduler, scaler=scaler, global_batch=global_batch)

    state = RunState()
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        checkpoint.load(ckpt_path, ctx, state)
    else:
        torch.manual_seed(cfg.seed + ddp.rank)  # dropout masks; each rank its own stream

    backend, backend_ms = _pick_backend(ctx, plan0)
    ctx = replace(ctx, backend=backend)
    compiled = want_compile
    if compiled:
        compile_blocks(model, cfg.compile_shapes)
    if compiled and device.type == "cuda":
        # every shape compiled (and its attention plan built) before the first step: steps run at steady speed
        _warm_shapes(ctx, plan0)
    if ddp.world_size > 1:
        ctx = replace(ctx, net=nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None))
    peak = cfg.peak_flops or known_peak_flops(device)
    meter = ThroughputMeter(peak_flops=peak * ddp.world_size if peak else None)
    state.loss_sum = torch.zeros((), device=device)
    limit = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    if ddp.main:
        log.info("train: steps %d-%d of %d on %s (%s, world size %d, batch %d, lr %.3g, attention %s%s)",
                 state.step, limit, total_steps, device, precision, ddp.world_size, cfg.batch_size, lr, backend,
                 ", compiled" if compiled else "")
    bar = Progress(total=limit, initial=state.step, desc="train", unit="step", log=log,
                   enabled=progress and ddp.main)
    pin = device.type == "cuda"
    t_start = time.perf_counter()
    shown: dict[str, float] = {}  # the latest loss and speed, shown beside the progress

    def result() -> LoopResult:
        rates = meter.overall()
        return LoopResult(
            steps=state.step, epochs_completed=state.step // steps_per_epoch, final_loss=state.last_loss,
            samples_per_s=rates.samples_per_s, tokens_per_s=rates.tokens_per_s, mfu=rates.mfu,
            train_seconds=time.perf_counter() - t_start, resumed_from_step=state.resumed_from,
            device=str(device), precision=precision, world_size=ddp.world_size, sdpa_backend=backend,
            compiled=compiled, learning_rate=lr, sdpa_timings_ms=backend_ms, batch_size=cfg.batch_size)

    def report() -> None:
        if state.loss_count == 0:
            return
        loss = state.loss_sum / state.loss_count
        if ddp.world_size > 1:
            dist.all_reduce(loss)
            loss = loss / ddp.world_size
        state.last_loss = float(loss.item())  # the one host sync per log interval
        state.loss_sum.zero_()
        state.loss_count = 0
        rates = meter.read()
        entry = StepLog(step=state.step, epoch=state.step / steps_per_epoch, loss=state.last_loss,
                        learning_rate=scheduler.get_last_lr()[0], samples_per_s=rates.samples_per_s,
                        tokens_per_s=rates.tokens_per_s, mfu=rates.mfu)
        state.logs.append(entry)
        if ddp.main and on_log is not None:
            on_log(entry)
        shown.update(loss=entry.loss, sps=round(entry.samples_per_s))

    def save() -> None:
        if ckpt_path is not None:
            checkpoint.write(ckpt_path, ctx, state)

    meter.restart()
    with bar, sdpa_context(backend):
        while state.step < limit:
            plan = plan0 if state.epoch == 0 else plan_batches(
                lengths, cfg.batch_size, multiple=multiple, max_length=cfg.max_length, seed=cfg.seed,
                epoch=state.epoch, world_size=ddp.world_size)
            todo = plan[state.batch: state.batch + (limit - state.step)]
            # prebuilt in pinned memory before the steps: no collation on the step's critical path
            batches = [ctx.batch(g, pin=pin) for g in todo]
            for global_idx, batch in zip(todo, batches, strict=True):
                loss = _step(ctx, batch.to(device))
                state.loss_sum += loss.detach()
                state.loss_count += 1
                state.step += 1
                state.batch += 1
                meter.add(len(global_idx), int(lengths[global_idx].sum()), flops.train_flops(lengths[global_idx]))
                if state.step % cfg.log_every == 0:
                    report()
                bar.update(1, **shown)
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    save()
            if state.batch >= steps_per_epoch:
                state.epoch += 1
                state.batch = 0
                report()
                save()
                if ddp.main and on_epoch_end is not None:
                    on_epoch_end(state.epoch, result())
        report()
        if cfg.max_steps and state.step < total_steps:
            save()  # stopped early: keep the place so that a later call resumes here
    final = result()
    final.train_seconds = meter.seconds or final.train_seconds
    return broadcast_from_main(final, ddp)


def _step(ctx: TrainContext, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One optimizer step on a batch already on the device; returns the loss as a device tensor (no sync)."""
    ids, mask, labels = batch
    with autocast(ctx.device, ctx.precision):
        logits = ctx.net(input_ids=ids, attention_mask=mask).logits
    loss = F.cross_entropy(logits.float(), labels)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()
    if ctx.cfg.max_grad_norm:
        # returns a device tensor; nothing reads it, so no sync
        nn.utils.clip_grad_norm_(ctx.net.parameters(), ctx.cfg.max_grad_norm, foreach=ctx.device.type == "cuda")
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return loss


def _warm_shapes(ctx: TrainContext, plan: list[np.ndarray]) -> None:
    """One forward+backward per distinct (rows, padded length) of this rank's batches, gradients discarded and
    the RNG restored: the run itself is unchanged. The shapes are the same every epoch (bucket sizes do not
    depend on the shuffle)."""
    seen: dict[tuple[int, int], np.ndarray] = {}
    for g in plan:
        part = ctx.batch_rows(g)
        seen.setdefault((len(part), ctx.width(part)), g)
    device = ctx.device
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(device)
    with sdpa_context(ctx.backend):
        for g in seen.values():
            ids, mask, y = ctx.batch(g).to(device)
            forward_backward(ctx.model, ids, mask, y, device=device, precision=ctx.precision)
            ctx.model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.set_rng_state(cpu_rng)
    torch.cuda.set_rng_state(cuda_rng, device)


def _pick_backend(ctx: TrainContext, plan: list[np.ndarray]) -> tuple[str, dict[str, float]]:
    """The SDPA kernel for this run and the timings behind the choice (rank 0 decides for every rank)."""
    if ctx.cfg.sdpa_backend != "auto":
        return ctx.cfg.sdpa_backend, {}
    if ctx.device.type != "cuda" or getattr(ctx.model.config, "_attn_implementation", "sdpa") != "sdpa":
        return "default", {}
    # time the most common padded length at full batch size: the shape most steps run
    widths = [ctx.width(g) for g in plan]
    common = max(set(widths), key=widths.count)
    sample = next(g for g, w in zip(plan, widths, strict=True) if w == common)
    backend, timings = choose_sdpa_backend(ctx.model, ctx.batch(sample), ctx.device, ctx.precision)
    # every rank must run the same kernels: rank 0 decides
    return broadcast_from_main(backend, ctx.ddp), timings
