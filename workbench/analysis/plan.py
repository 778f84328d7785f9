"""The plan of an `analyze` call: which analyses run at which steps of which snapshot, on which evaluation set,
how their first commit treats the results already stored, and what each step reads (its provenance). Made in
the driver, executed elsewhere."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.analysis import evalset, provenance
from workbench.analysis import steps as steps_mod
from workbench.analysis.provenance import Provenance
from workbench.analysis.registry import resolve
from workbench.errors import MissingData, UsageError
from workbench.store.results import ResultsMismatch, group_path
from workbench.store.writer import code_version

if TYPE_CHECKING:
    from workbench.analysis.base import Analysis
    from workbench.analysis.evalset import EvalSet
    from workbench.store.run import Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    location: str
    snapshot: str  # every task reads this snapshot of the run
    steps: tuple[int, ...]  # every checkpoint of the snapshot (for prev_step and init_step)
    analyses: tuple["Analysis", ...]
    eval_set: "EvalSet | None"
    tasks: tuple[tuple["Analysis", int], ...]  # pending (analysis, step) pairs, in step order
    replace: dict[str, bool | Collection[int]]  # per analysis, for its first commit (store.results.Update)
    memory_per_task: int  # bytes a task may hold, for the default number of workers
    provenance: dict[str, dict[int, Provenance]]  # what each pending step reads, recorded with its results
    stale: dict[str, dict[int, str]]  # stored steps pending again because their inputs changed: {step: why}

    def __len__(self) -> int:
        return len(self.tasks)


def make_plan(run: "Run", names=None, steps=None, params: dict[str, dict] | None = None,
              eval_data: str | os.PathLike | None = None, recompute: bool = False) -> Plan:
    """The plan for `names` (None: every registered analysis the run allows, the others skipped with a
    warning) at `steps` (None: all), with `params` = {name: {parameter: value}}.

    A step is pending when it is not stored, or when what it read has changed since (`provenance`), or with
    `recompute`. Stored steps outside the selection are kept; `ResultsMismatch` where keeping them would mix
    results computed with other parameters or inputs (or other parameters are given without `recompute`)."""
    analyses = resolve(names, params)
    chosen = steps_mod.select(run.steps, steps)
    try:
        eval_set = evalset.resolve(run, analyses, eval_data)
    except MissingData as e:
        if names or all(a.kind == "forward" for a in analyses):
            raise
        # Asked for "everything": run what the run allows, and say what was left out and why.
        log.warning(f"skipping {', '.join(a.name for a in analyses if a.kind == 'forward')}: {e}")
        analyses = [a for a in analyses if a.kind != "forward"]
        eval_set = None
    usable = []
    for a in analyses:
        try:
            a.check(run, eval_set)
        except (UsageError, MissingData) as e:
            if names:
                raise
            log.warning(f"skipping {a.name}: {e}")
        else:
            usable.append(a)
    code = code_version()
    tasks, replace, want, stale = [], {}, {}, {}
    for a in usable:
        want[a.name] = provenance.expected(a, run, eval_set, chosen, code)
        pending, replace[a.name], stale[a.name] = _pending(run, a, chosen, want[a.name], recompute)
        tasks += [(a, s) for s in pending]
    tasks.sort(key=lambda t: (t[1], t[0].name))  # step order: a worker's previous step is often still cached
    memory = max((a.memory_per_task(run) for a in usable), default=0)
    return Plan(run.location, run.snapshot, tuple(run.steps), tuple(usable), eval_set, tuple(tasks), replace, memory,
                {n: {s: p[s] for a, s in tasks if a.name == n} for n, p in want.items()}, stale)


def _pending(run: "Run", a: "Analysis", chosen: list[int], want: dict[int, Provenance],
             recompute: bool) -> tuple[list[int], bool | tuple[int, ...], dict[int, str]]:
    """The steps of `a` to compute, how its first commit treats the stored ones, and the stale ones."""
    have = provenance.stored(run, a.name)
    if not have:
        return list(chosen), False, {}
    where, new_params = group_path(a.name), a.config()
    old_params = run.stored_results()[a.name].analysis.get("params")
    kept = sorted(set(have) - set(chosen))
    if old_params != new_params:
        if not recompute:
            raise ResultsMismatch(f"{where} in {run.location} was computed with parameters {old_params!r}, not "
                                  f"{new_params!r}; pass --recompute (recompute=True) to replace those results")
        if kept:
            raise ResultsMismatch(f"{where}: recomputing steps {_span(chosen)} with parameters {new_params!r} "
                                  f"would mix them with steps {_span(kept)} computed with {old_params!r}; "
                                  "recompute every step (leave out --steps)")
        return list(chosen), True, {}
    stale = {s: why for s in chosen if s in have and (why := provenance.why_stale(have[s], want[s]))}
    shared = {k: v for k, v in want[chosen[0]].inputs.items() if not k.endswith("@step")}
    for s in kept:  # kept steps must have read alike what every step reads (evaluation set, files, whole tables)
        old = have[s]
        if old is None:
            how = "stored before provenance was recorded"
        elif differ := sorted(k for k, v in shared.items() if old.inputs.get(k) != v):
            how = f"computed with another {differ[0]} than the steps to compute now would be"
        else:
            continue
        raise ResultsMismatch(f"{where}: step {s}, not among the steps asked for, was {how}; analyse every step "
                              "(leave out --steps) so that all of them are recomputed")
    pending = [s for s in chosen if recompute or s not in have or s in stale]
    redone = tuple(s for s in pending if s in have)
    return pending, redone or False, stale


def _span(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 4 else f"{steps[0]}, {steps[1]}, ..., {steps[-1]} ({len(steps)})"
