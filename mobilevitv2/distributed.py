"""One process or many: the process group torchrun describes, the sharding of work across ranks, and the
few collective steps the commands need.

``torchrun --nproc-per-node N -m mobilevitv2 ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; without them
everything runs in one process and each collective is a no-op. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | None = None) -> Context:
    """The process group torchrun asked for (initialised here if it is not yet), and this rank's device:
    ``device`` when given ("cpu", "cuda"), else the GPU of this local rank when there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible")
        chosen = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (the tensor itself with one process). Reduced on the rank's
    device (NCCL needs GPU tensors), returned where it came from."""
    if not ctx.distributed:
        return tensor
    reduced = tensor.to(ctx.device).clone()
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


def broadcast_object(ctx: Context, value):
    """Rank 0's ``value`` on every rank."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(ctx: Context, value) -> list:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` with one process)."""
    if not ctx.distributed:
        return [value]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def any_rank(ctx: Context, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (so that all ranks stop together)."""
    return bool(all_reduce_sum(ctx, torch.tensor([int(flag)])).item())


class ShardSampler(torch.utils.data.Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: every item on exactly one rank, none repeated (unlike
    ``DistributedSampler``, which pads with repeats), in input order, for evaluation and prediction."""

    def __init__(self, length: int, ctx: Context) -> None:
        self.indices = range(ctx.rank, length, ctx.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@contextlib.contextmanager
def main_first(ctx: Context):
    """Rank 0 runs the block before the others (for work that fills a cache the others then read)."""
    if not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.is_main:
        barrier(ctx)
