"""Data-parallel training with torchrun: process group set-up and rank helpers.

Launch ``torchrun --nproc_per_node N -m wiseseg.cli train-...``; each process reads RANK,
WORLD_SIZE and LOCAL_RANK from the environment. Gloo is used on CPU, NCCL on CUDA. Rank 0
alone logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group if one is configured; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def launched_as_main() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or was not launched by torchrun:
    the one process that reports what the command did."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of a scalar over ranks (for logging the global loss)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def setup_training(device: str, seed: int, deterministic: bool
                   ) -> tuple[torch.device, DistInfo]:
    """Device (this rank's GPU under torchrun), process group, seeds, deterministic flag;
    freed memory kept for reuse (:func:`wiseseg.allocator.keep_freed_memory`)."""
    from wiseseg.allocator import keep_freed_memory
    from wiseseg.engine.reproducibility import resolve_device, seed_everything, set_deterministic

    keep_freed_memory()
    dev = resolve_device(device)
    info = init_distributed(dev)
    if info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
    seed_everything(seed)
    set_deterministic(deterministic)
    return dev, info
