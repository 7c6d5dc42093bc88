"""Checkpoints of a training run: model, optimizer, scheduler, loss scaler, every rank's RNG streams and the place
in the run (step, epoch, batch), written atomically, so a killed run resumes exactly where its last one was taken.

Where they live is the caller's choice (sentimentops.steps.train.cli: outside the step's outputs, keyed by dataset
and settings, see `keyed_dir`); the loop reads and writes `<dir>/last.pt`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.train.context import RunState, TrainContext

log = get_logger(__name__)
CHECKPOINT_NAME = "last.pt"


def keyed_dir(root: Path, dataset_hash: str, settings: dict[str, Any]) -> Path:
    """`root/<12 hex>`: a folder per (dataset content, training settings), so a run over other data or with other
    settings never resumes from a stale checkpoint, while a re-run of the same one finds its own."""
    key = json.dumps({"dataset": dataset_hash, "settings": settings}, sort_keys=True, default=str)
    return Path(root) / hashlib.sha256(key.encode()).hexdigest()[:12]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Atomic: a reader (or a resumed run after a crash mid-write) sees the old checkpoint or the new one."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / CHECKPOINT_NAME
    tmp = directory / f".{CHECKPOINT_NAME}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, final)
    return final


def write(path: Path, ctx: TrainContext, state: RunState) -> None:
    """Every rank's RNG gathered to rank 0, which writes the checkpoint; all ranks wait for it."""
    ddp = ctx.ddp
    rngs = [None] * ddp.world_size
    if ddp.world_size > 1:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if ddp.main:
        save_checkpoint(path.parent, {
            "model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
            "scheduler": ctx.scheduler.state_dict(), "scaler": ctx.scaler.state_dict() if ctx.scaler else None,
            "step": state.step, "epoch": state.epoch, "batch": state.batch, "rng": rngs,
            "world_size": ddp.world_size, "n_samples": len(ctx.lengths), "global_batch": ctx.global_batch,
            "config": asdict(ctx.cfg)})
        log.info("train: checkpoint at step %d written to %s", state.step, path,
                 extra={"checkpoint_step": state.step})
    if ddp.world_size > 1:
        dist.barrier()


def load(path: Path, ctx: TrainContext, state: RunState) -> None:
    """Restores model, optimizer, scheduler, scaler, this rank's RNG and the place in the run from `path`; refuses
    a checkpoint written for another batch plan (it could not resume exactly)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    n_samples, ddp = len(ctx.lengths), ctx.ddp
    if ckpt["n_samples"] != n_samples or ckpt["global_batch"] != ctx.global_batch \
            or ckpt["world_size"] != ddp.world_size:
        raise ValueError(
            f"checkpoint {path} was written for {ckpt['n_samples']} samples, global batch "
            f"{ckpt['global_batch']}, {ckpt['world_size']} processes; this run has {n_samples}, "
            f"{ctx.global_batch}, {ddp.world_size}: the batch plan would differ, so it cannot resume exactly. "
            "Use a new directory.")
    ctx.model.load_state_dict(ckpt["model"])
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    ctx.scheduler.load_state_dict(ckpt["scheduler"])
    if ctx.scaler is not None and ckpt["scaler"] is not None:
        ctx.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"][ddp.rank])
    state.step, state.epoch, state.batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
    state.resumed_from = ckpt["step"]
    if ddp.main:
        log.info("train: resumed from step %d (epoch %d, batch %d) of %s", state.step, state.epoch, state.batch,
                 path, extra={"resumed_from_step": state.step})
