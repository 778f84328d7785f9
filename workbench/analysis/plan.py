"""The plan of an `analyze` call: which analyses run at which steps of which snapshot, on which evaluation set,
and how their first commit treats the results already stored. Made in the driver, executed elsewhere."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.analysis import evalset, results
from workbench.analysis import steps as steps_mod
from workbench.analysis.registry import resolve
from workbench.errors import MissingData, UsageError

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

    def __len__(self) -> int:
        return len(self.tasks)


def make_plan(run: "Run", names=None, steps=None, params: dict[str, dict] | None = None,
              eval_data: str | os.PathLike | None = None, recompute: bool = False) -> Plan:
    """The plan for `names` (None: every registered analysis the run allows, the others skipped with a
    warning) at `steps` (None: all), with `params` = {name: {parameter: value}}. Stored results are reused
    where compatible (`ResultsMismatch` otherwise); `recompute` replaces them."""
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
    stored = run.stored_results()
    tasks, replace = [], {}
    for a in usable:
        if recompute:
            info = stored.get(a.name)
            same = info is not None and results.difference(a, info.analysis, eval_set) is None
            replace[a.name] = tuple(chosen) if same else True  # keep the other steps only if computed alike
            have = set()
        else:
            replace[a.name] = False
            have = set(results.compatible_steps(run, a, eval_set))
        tasks += [(a, s) for s in chosen if s not in have]
    tasks.sort(key=lambda t: (t[1], t[0].name))  # step order: a worker's previous step is often still cached
    memory = max((a.memory_per_task(run) for a in usable), default=0)
    return Plan(run.location, run.snapshot, tuple(run.steps), tuple(usable), eval_set, tuple(tasks), replace, memory)
