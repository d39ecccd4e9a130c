"""Data-parallel training across processes: torchrun detection, sharding, reductions.

    torchrun --standalone --nproc-per-node=2 -m cifarlab train --model baseline_cnn --subset 2000

torchrun sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`; `setup()`
reads them and joins the process group (gloo on CPU, nccl when CUDA is there). The data stays
in memory in every process: instead of a `DistributedSampler` each step draws the same global
permutation (seeded per epoch) on every rank and rank r takes the r-th contiguous slice of each
global batch (`shard`). With DDP averaging gradients, a step over `world_size` slices of
`batch/world_size` samples equals one process's step over the whole batch (for models without
dropout or BatchNorm, whose per-process randomness/statistics necessarily differ; BatchNorm is
synchronised on CUDA with SyncBatchNorm).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cifarlab.errors import CifarlabError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup() -> DistInfo:
    """Join the process group when launched by torchrun (or a test that sets the same env)."""
    world = env_world_size()
    cuda = torch.cuda.is_available()
    if world <= 1:
        return DistInfo(device="cuda" if cuda else "cpu")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend=backend)
        log.info("joined %s process group: rank %d of %d", backend, rank, world)
    device = "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, info: DistInfo) -> int:
    """Per-rank batch size; the global batch must split evenly so every step is identical."""
    if batch_size % info.world_size:
        raise CifarlabError(
            f"--batch-size {batch_size} is not divisible by the {info.world_size} processes; "
            f"pick a multiple of {info.world_size}"
        )
    return batch_size // info.world_size


def shard(global_idx: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous slice (along dim 0) of one global batch of indices or params."""
    if not info.enabled:
        return global_idx
    per = global_idx.shape[0] // info.world_size
    return global_idx[info.rank * per : (info.rank + 1) * per]


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few Python numbers over ranks (float64 so counts stay exact)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
