"""Distributed fine-tuning under torchrun: the process group, the device of each rank, sums across ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import MbdlError

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _setup_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return _Dist()
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        here = True
    return _Dist(dist.get_rank(), dist.get_world_size(), local, here)


def _resolve_device(device: str, d: _Dist) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MbdlError(f"device {device} asked for CUDA, but no CUDA device is available", "use --device cpu or --device auto")
        if d.active or device == "cuda":
            device = f"cuda:{d.local_rank}" if d.active else "cuda"
    elif device != "cpu":
        raise MbdlError(f"unknown device {device!r}", "use cpu, cuda, cuda:N or auto")
    return device


def _all_reduce_sum(values: list[float], d: _Dist, device: str) -> list[float]:
    if not d.active:
        return values
    import torch
    import torch.distributed as dist

    dev = device if device.startswith("cuda") else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()
