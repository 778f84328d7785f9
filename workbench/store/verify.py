"""`wb verify`: read every chunk, check checksums and finiteness, and flag checkpoints that do not belong.

A checkpoint that jumps away from both neighbours while they stay close to each other (a duplicated,
misplaced or foreign checkpoint, as found in public suites) is flagged from the distances
‖θ_a − θ_t‖, ‖θ_t − θ_b‖ and ‖θ_a − θ_b‖ between consecutive checkpoints a < t < b.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import icechunk
import numpy as np
import torch
from zarr.core.sync import sync

from workbench.store.layout import STEP, TENSORS, to_torch
from workbench.store.tensors import DECODE_ERRORS

JUMP_RATIO = 2.0  # flag t when min(d(a,t), d(t,b)) > JUMP_RATIO * d(a,b)


@dataclass(frozen=True)
class Problem:
    kind: str  # corrupt | non-finite | duplicate | jump
    array: str
    step: int | None
    detail: str

    def __str__(self) -> str:
        where = f"{self.array} at step {self.step}" if self.step is not None else self.array
        return f"{self.kind}: {where}: {self.detail}"


def verify(run, progress: bool = True) -> list[Problem]:
    """Every problem found in the run (an empty list for a healthy run)."""
    from tqdm.auto import tqdm

    arrays = list(_stacked_arrays(run.root))
    problems: list[Problem] = []
    sq = {}  # (step_a, step_b) -> summed squared distance over all parameters
    total = sum(arr.shape[0] for _, arr, _ in arrays)
    with tqdm(total=total, desc="verify", unit="chunk-row", disable=not progress) as bar:
        for path, arr, steps in arrays:
            order = np.argsort(steps, kind="stable")
            window: list[tuple[int, torch.Tensor | None]] = []
            for idx in order:
                step = steps[idx]
                data = _read_row(arr, path, int(idx), step, problems)
                bar.update(1)
                if path.startswith("params/") and data is not None:
                    window = (window + [(step, data)])[-3:]
                    for prev_step, prev in window[:-1]:
                        if prev is not None:
                            d = float(torch.sum((data - prev).double() ** 2))
                            sq[(prev_step, step)] = sq.get((prev_step, step), 0.0) + d
    problems += _jumps(sorted(run.steps), sq)
    return problems


def _stacked_arrays(root):
    """(path, array, step of each index) for every stacked array of every tensor group."""
    for group_path in _tensor_groups(root):
        group = root[group_path]
        steps = [int(s) for s in group[STEP][:]]
        for name, arr in group.arrays():
            if name != STEP:
                yield f"{group_path}/{name}", arr, steps


def _tensor_groups(root, prefix: str = ""):
    for name, group in root.groups():
        path = f"{prefix}{name}"
        if group.attrs.get("kind") == TENSORS:
            yield path
        else:
            yield from _tensor_groups(group, path + "/")


def _read_row(arr, path: str, idx: int, step: int, problems: list[Problem]) -> torch.Tensor | None:
    """One step of one array, chunk by chunk so a bad chunk is named; float32 for distance sums."""
    layered = "layer" in arr.metadata.dimension_names
    keys = [(idx, layer) for layer in range(arr.shape[1])] if layered else [idx]

    async def one(key):
        try:
            return await arr.async_array.getitem(key)
        except DECODE_ERRORS + (icechunk.IcechunkError,) as e:
            layer = f" layer {key[1]}" if layered else ""
            problems.append(Problem("corrupt", path, step, f"chunk{layer} unreadable: {str(e).splitlines()[0]}"))
            return None

    async def gather():
        return await asyncio.gather(*(one(k) for k in keys))

    parts = sync(gather())
    if any(p is None for p in parts):
        return None
    dtype = arr.attrs["dtype"]
    tensor = torch.stack([to_torch(p, dtype) for p in parts]) if layered else to_torch(parts[0], dtype)
    if not tensor.is_floating_point():
        return None
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        problems.append(Problem("non-finite", path, step, f"{bad} NaN/Inf values"))
        return None
    return tensor.float()


def _jumps(steps: list[int], sq: dict[tuple[int, int], float]) -> list[Problem]:
    problems = []
    for a, t in zip(steps, steps[1:]):
        if sq.get((a, t)) == 0.0:
            problems.append(Problem("duplicate", "params", t, f"weights identical to step {a}"))
    for a, t, b in zip(steps, steps[1:], steps[2:]):
        if not all(k in sq for k in ((a, t), (t, b), (a, b))):
            continue
        d_at, d_tb, d_ab = (np.sqrt(sq[k]) for k in ((a, t), (t, b), (a, b)))
        if min(d_at, d_tb) > JUMP_RATIO * d_ab:
            problems.append(Problem("jump", "params", t, f"‖Δ‖ to steps {a} and {b} is {d_at:.3g} and {d_tb:.3g}, "
                                    f"but only {d_ab:.3g} between them: a foreign or misplaced checkpoint?"))
    return problems
