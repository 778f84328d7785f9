"""Analyses of a run, computed per checkpoint in parallel with Dask and stored in the run as xarray results.

    import workbench
    run = workbench.open("runs/tiny")
    run.analyze(["weights"], steps="0:20000:1000", workers=2)
    ds = run.results("weights")            # xarray.Dataset [step, param]

Write an analysis: subclass `Analysis`, decorate with `@register` (see `workbench.analysis.base`).
Built-in analyses live in the modules of `BUILTIN`, imported here so that they register.
"""

from __future__ import annotations

import importlib

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

BUILTIN = tuple(f"workbench.analysis.{m}" for m in ("weights", "loss", "activations", "lens", "similarity",
                                                    "memorization", "evaluation"))

for _module in BUILTIN:
    importlib.import_module(_module)

__all__ = ["Analysis", "AnalysisFailed", "EvalSet", "Plan", "ResultsMismatch", "StepContext", "WorkerState",
           "analyze", "get", "load_results", "make_plan", "parse_steps", "register", "registry", "resolve",
           "select_steps", "unregister"]
