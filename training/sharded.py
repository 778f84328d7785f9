"""FSDP2 training state in and out of the run without gathering the model on one rank.

Under `parallel = "fsdp"` every parameter (and its AdamW moments) is a DTensor cut by rows across the ranks
(`Shard(0)`, `torch.chunk`'s cut). A checkpoint is written by all ranks into one Icechunk commit: each tensor has
one owning rank (tensors dealt out by size, largest first, to the least loaded rank); the ranks send their rows of
it to its owner (`dist.gather` on a process group of its own, so the writing thread's collectives never meet the
training's), and each rank writes the tensors it owns into its fork of rank 0's session (`RunWriter.write_part`);
rank 0 merges the forks and commits once. A rank holds its own shards and, while writing, the tensors it owns —
about 1/world of the model. Reading back cuts each stored tensor to the rank's rows, one tensor at a time.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from training.distributed import World


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """The model under FSDP2: each block its own unit (all-gathered for its forward and backward only), then the
    rest (embeddings, final norm, head) as the root's."""
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block)
    return fully_shard(model)


def rows(n: int, world: World) -> slice:
    """This rank's rows of a dimension of `n` under `Shard(0)` (`torch.chunk`: ceil(n / world) rows a rank)."""
    per = -(-n // world.size)
    start = min(world.rank * per, n)
    return slice(start, min(start + per, n))


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def from_full(full: torch.Tensor, like: torch.Tensor, world: World) -> torch.Tensor:
    """`full` cut as `like` is: a DTensor of this rank's rows for a sharded `like`, else `full` itself."""
    if not hasattr(like, "to_local"):
        return full.to(like.device)
    from torch.distributed.tensor import DTensor

    part = full[rows(full.shape[0], world)].to(like.device)
    return DTensor.from_local(part, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride())


def owners(shapes: dict[str, torch.Size], world: World) -> dict[str, int]:
    """The rank that writes each tensor: by size, largest first, to the least loaded rank (the same on all)."""
    load = [0] * world.size
    out = {}
    for name in sorted(shapes, key=lambda n: (-shapes[n].numel(), n)):
        rank = min(range(world.size), key=lambda r: (load[r], r))
        out[name] = rank
        load[rank] += shapes[name].numel()
    return out


class ShardedWriter:
    """Writes checkpoints from every rank (see the module docstring); `write_checkpoint` is called on all ranks
    with their own shards (host copies), in the same order — from each rank's `BackgroundWriter` thread."""

    def __init__(self, writer, world: World, shapes: dict[str, torch.Size], dtypes: dict[str, torch.dtype]):
        self.writer, self.world = writer, world  # the `RunWriter` on rank 0, None elsewhere
        self.shapes, self.dtypes = shapes, dtypes
        self.owner = owners(shapes, world)
        self.group = dist.new_group(backend="gloo")  # the writing thread's own collectives
        self.last_committed: int | None = None

    def write_checkpoint(self, step: int, state: dict[str, torch.Tensor],
                         optimizer_state: dict[str, dict[str, torch.Tensor]], tables=None) -> None:
        from workbench.store import RunWriter

        params = self._owned(state)
        slots = sorted({slot for s in optimizer_state.values() for slot in s} - {"step"})  # sharded as the parameter
        moments = {slot: self._owned({n: s[slot] for n, s in optimizer_state.items()}) for slot in slots}
        optimizer = {n: {"step": s["step"] if self.owner[n] == self.world.rank else s["step"].to("meta"),
                         **{slot: moments[slot][n] for slot in slots}} for n, s in optimizer_state.items()}
        forks = [None] * self.world.size
        if self.world.main:
            session, forks = self.writer.fork_checkpoint(step, params, optimizer, self.world.size)
        mine = [None]
        dist.scatter_object_list(mine, forks if self.world.main else None, src=0, group=self.group)
        crcs = RunWriter.write_part(mine[0], step, params, optimizer)
        parts = [None] * self.world.size if self.world.main else None
        dist.gather_object((mine[0], crcs), parts, dst=0, group=self.group)
        if self.world.main:
            self.writer.commit_forks(session, [f for f, _ in parts], step, params, [c for _, c in parts], tables)
        self.last_committed = step

    def _owned(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each tensor whole on its owner (its rows gathered from every rank), a meta tensor of its shape
        elsewhere."""
        out = {}
        for name in sorted(parts):  # the same order on every rank
            shape, owner, part = self.shapes[name], self.owner[name], parts[name]
            per = -(-shape[0] // self.world.size)
            if part.shape[0] < per:  # the last ranks of an uneven cut: padded to the others' rows
                part = torch.cat([part, part.new_zeros((per - part.shape[0], *shape[1:]))])
            if owner != self.world.rank:
                dist.gather(part, None, dst=owner, group=self.group)
                out[name] = torch.empty(shape, dtype=self.dtypes[name], device="meta")
                continue
            full = part.new_empty((per * self.world.size, *shape[1:]))
            dist.gather(part, list(full.split(per)), dst=owner, group=self.group)  # straight into its rows
            out[name] = full[: shape[0]]
        return out
