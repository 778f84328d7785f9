"""`wb verify`: read every chunk, check checksums and finiteness, and flag checkpoints that do not belong.

A checkpoint that jumps away from both neighbours while they stay close to each other (a duplicated,
misplaced or foreign checkpoint, as found in public suites) is flagged from the distances
‖θ_a − θ_t‖, ‖θ_t − θ_b‖ and ‖θ_a − θ_b‖ between consecutive checkpoints a < t < b.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from zarr.core.sync import sync

from workbench.errors import CorruptData, ReadFailed
from workbench.store.layout import PARAMS, TENSORS, to_torch
from workbench.store.tensors import TensorGroup

if TYPE_CHECKING:
    import torch  # the tensors read here bring it

JUMP_RATIO = 2.0  # flag t when min(d(a,t), d(t,b)) > JUMP_RATIO * d(a,b)


@dataclass(frozen=True)
class Problem:
    kind: str  # corrupt | unreadable | non-finite | duplicate | jump
    array: str
    step: int | None
    detail: str

    def __str__(self) -> str:
        where = f"{self.array} at step {self.step}" if self.step is not None else self.array
        return f"{self.kind}: {where}: {self.detail}"


def verify(run, progress: bool = True) -> list[Problem]:
    """Every problem found in the run (an empty list for a healthy run)."""
    from tqdm.auto import tqdm

    arrays = list(_stacked_arrays(run))
    problems: list[Problem] = []
    distances = Distances()
    total = sum(arr.shape[0] for _, _, arr in arrays)
    with tqdm(total=total, desc="verify", unit="chunk-row", disable=not progress) as bar:
        for group, name, arr in arrays:
            distances.next_array()
            for idx in np.argsort(group.steps, kind="stable"):
                step = group.steps[idx]
                data = _read_row(group, name, arr, step, int(idx), problems)
                bar.update(1)
                if group.group.path == PARAMS and data is not None:
                    distances.add(step, data)
    problems += _jumps(sorted(run.steps), distances.sq)
    return problems


class Distances:
    """‖θ_a − θ_b‖² between checkpoints one and two apart in step order (the numbers of the jump check),
    summed over arrays: feed each array's steps in step order with `add` (float32 tensors; the squared
    difference is summed in float64), and call `next_array` before each array."""

    def __init__(self):
        self.sq: dict[tuple[int, int], float] = {}
        self._window: list[tuple[int, torch.Tensor]] = []

    def next_array(self) -> None:
        self._window = []

    def add(self, step: int, data: torch.Tensor) -> None:
        self._window = (self._window + [(step, data)])[-3:]
        for prev_step, prev in self._window[:-1]:
            d = float(((data - prev).double() ** 2).sum())
            self.sq[(prev_step, step)] = self.sq.get((prev_step, step), 0.0) + d


def checkpoint_distances(run) -> dict[tuple[int, int], float]:
    """{(a, b): ‖θ_a − θ_b‖²} over every floating-point parameter (norms included), for the pairs of stored
    steps one and two apart in step order: computed by `verify`'s own `Distances`, so the numbers are those of
    its jump check (for a run without corrupt or non-finite tensors, which verify leaves out)."""
    group = sync(TensorGroup.open(run.store, PARAMS))
    if group is None:
        return {}
    distances = Distances()
    for name, arr in sorted(sync(group.arrays()).items()):  # sorted: zarr lists arrays in varying order
        if arr.attrs["dtype"] not in ("float32", "float16", "bfloat16", "float64"):
            continue
        distances.next_array()
        for idx in sorted(range(len(group.steps)), key=lambda i: group.steps[i]):
            step = group.steps[idx]
            distances.add(step, to_torch(sync(group.read_array(name, arr, step, idx)), arr.attrs["dtype"]).float())
    return distances.sq


def _stacked_arrays(run):
    """(tensor group, array name, array) for every stacked array of every tensor group of the run."""
    for group_path in _tensor_groups(run.root):
        group = sync(TensorGroup.open(run.store, group_path))
        for name, arr in sync(group.arrays()).items():
            yield group, name, arr


def _tensor_groups(root, prefix: str = ""):
    for name, group in root.groups():
        path = f"{prefix}{name}"
        if group.attrs.get("kind") == TENSORS:
            yield path
        else:
            yield from _tensor_groups(group, path + "/")


def _read_row(group, name: str, arr, step: int, idx: int, problems: list[Problem]) -> torch.Tensor | None:
    """One step of one array as float32 (for distance sums), or None after recording why it is unusable."""
    path = f"{group.group.path}/{name}"
    try:
        data = sync(group.read_array(name, arr, step, idx))
    except CorruptData as e:
        problems.append(Problem("corrupt", path, step, f"unreadable: {str(e).split(': ', 1)[-1]}"))
        return None
    except ReadFailed as e:
        problems.append(Problem("unreadable", path, step, str(e).split(': ', 1)[-1]))
        return None
    tensor = to_torch(data, arr.attrs["dtype"])
    if not tensor.is_floating_point():
        return None
    bad = int((~tensor.isfinite()).sum())
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
