"""The trainer across processes: torchrun's environment, the process group, and each rank's share of a step.

Under `torchrun` (RANK and WORLD_SIZE set) the process group starts on gloo (CPU) or NCCL (CUDA). Every rank
draws the same global batch of a step (the data order is a function of the step, as in one process) and trains
on its own rows of it, `micro_batch_size` rows at a time; the gradients are averaged across ranks, so a step
is the one-process step on the same global batch up to float rounding. Under DDP every rank holds the whole
model; under FSDP2 each its rows of every parameter (`training.sharded`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from workbench.errors import UsageError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The rank that writes the run."""
        return self.rank == 0

    def rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch `[batch, seq_len + 1]`."""
        per = tokens.shape[0] // self.size
        return tokens[self.rank * per: (self.rank + 1) * per]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over the ranks."""
        if self.size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.size
        return value


def join(parallel: str, device: torch.device) -> World:
    """The world torchrun started this process in (the process group initialised), or one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if parallel == "none":
        raise UsageError(f"started by torchrun as one of {size} processes, but [train] parallel is \"none\"; "
                         "set --parallel ddp or fsdp")
    if device.type == "cuda":  # one GPU per rank: its "cuda" is the GPU of its local rank
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def accumulation(batch_size: int, micro_batch_size: int | None, world: World) -> tuple[int, int]:
    """(rows per micro-step, micro-steps per step) of one rank; a global batch that does not split into whole
    micro-batches on every rank is refused in one line."""
    micro = micro_batch_size or batch_size // world.size
    if micro < 1 or batch_size % (micro * world.size):
        raise UsageError(f"batch_size {batch_size} does not split into micro-batches of {micro_batch_size or micro} "
                         f"rows on {world.size} process(es): it must be a multiple of micro_batch_size × processes")
    return micro, batch_size // (micro * world.size)


@contextmanager
def gradient_sync(module: torch.nn.Module, world: World, last: bool):
    """A micro-step's backward: the gradients reduced across ranks on the last micro-step of a step only (DDP's
    `no_sync` before it; FSDP2's `set_requires_gradient_sync`)."""
    if world.size == 1:
        yield
    elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
        with module.no_sync() if not last else nullcontext():
            yield
    else:
        module.set_requires_gradient_sync(last)
        yield


def leave(world: World) -> None:
    """Wait for every rank, then close the process group."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
