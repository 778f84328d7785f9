"""Analyses of a run, computed per checkpoint in parallel with Dask and stored in the run as xarray results.

    import workbench
    run = workbench.open("runs/tiny")
    run.analyze(["weights"], steps="0:20000:1000", workers=2)
    ds = run.results("weights")            # xarray.Dataset [step, param]

This package is the engine: the `Analysis` base class and registry, the plan with provenance, the executors,
the commit loop, per-worker state, and the readers of task and data files. Analyses register from above it
through the entry-point group `workbench.analyses`: the built-in ones (`workbench.analyses`) and plugins such as
`probes` alike, so the engine loads without them. Write one: subclass `Analysis`, decorate with `@register`
(see `workbench.analysis.base`), and name its module in that group.
"""

from __future__ import annotations

from workbench.analysis.base import Analysis, AnalysisFailed, StepContext
from workbench.analysis.evalset import EvalSet
from workbench.analysis.plan import Plan, make_plan
from workbench.analysis.registry import get, register, registry, resolve, unregister
from workbench.analysis.results import load as load_results
from workbench.analysis.runner import analyze
from workbench.analysis.state import WorkerState
from workbench.analysis.steps import parse as parse_steps
from workbench.analysis.steps import select as select_steps
from workbench.store.results import ResultsMismatch

__all__ = ["Analysis", "AnalysisFailed", "EvalSet", "Plan", "ResultsMismatch", "StepContext", "WorkerState",
           "analyze", "get", "load_results", "make_plan", "parse_steps", "register", "registry", "resolve",
           "select_steps", "unregister"]
