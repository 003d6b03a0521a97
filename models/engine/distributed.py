"""Distributed set-up for training under torchrun, and the reductions the losses need.

    env = setup_distributed("auto")      # reads RANK, WORLD_SIZE, LOCAL_RANK
    ...
    if env.initialised_here:
        torch.distributed.destroy_process_group()

NCCL on GPUs, gloo on CPUs. Outside torchrun (no WORLD_SIZE) the run is one process and every
reduction here returns its input.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.engine import TrainError

__all__ = ["Distributed", "maybe_sync_batchnorm", "mean_over_ranks", "setup_distributed"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised_here: bool

    @property
    def leader(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Join the process group torchrun describes (when WORLD_SIZE > 1) on ``device`` ("auto":
    CUDA when available)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available")
    where = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(where)
    here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        here = True
    return Distributed(rank, world, local, where, here)


def mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of a tensor over the ranks (a detached copy), itself when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


def maybe_sync_batchnorm(model: nn.Module, env: Distributed, uses_bn: bool) -> nn.Module:
    """BatchNorm -> SyncBatchNorm under multi-GPU DDP (ALP paper Sec. 3.4: SyncBN in backbone,
    FPN and heads); on CPUs gloo has no SyncBN, so statistics stay per rank (a note says so)."""
    if env.world_size <= 1 or not uses_bn:
        return model
    if env.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if env.leader:
        print("note: SyncBN needs GPUs; BN statistics stay per rank on CPUs", file=sys.stderr)
    return model
