"""Distributed data parallel: joining torchrun's process group (nccl on CUDA, gloo on CPU), or not at all."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: rank 0 of 1 without torchrun."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Joins the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); no-op otherwise."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def broadcast_from_main(value, ddp: Dist):
    """rank 0's `value` on every rank (the value itself without a group)."""
    if ddp.world_size <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
