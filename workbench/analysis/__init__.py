"""Analyses of a run, computed per checkpoint in parallel with Dask and stored in the run as xarray results.

    import workbench
    run = workbench.open("runs/tiny")
    run.analyze(["weights"], steps="0:20000:1000", workers=2)
    ds = run.results("weights")            # xarray.Dataset [step, param]

Write an analysis: subclass `Analysis`, decorate with `@register` (see `workbench.analysis.engine`).
Built-in analyses live in the modules of `BUILTIN`, imported here so that they register.
"""

from __future__ import annotations

import importlib

from workbench.analysis.engine import (
    Analysis,
    AnalysisFailed,
    StepContext,
    get,
    register,
    registry,
    resolve,
    unregister,
)
from workbench.analysis.evalset import EvalSet
from workbench.analysis.results import ResultsMismatch, stored
from workbench.analysis.results import load as load_results
from workbench.analysis.runner import analyze
from workbench.analysis.steps import parse as parse_steps
from workbench.analysis.steps import select as select_steps

BUILTIN = tuple(f"workbench.analysis.{m}" for m in ("weights", "loss", "activations", "lens", "similarity",
                                                    "memorization"))

for _module in BUILTIN:
    importlib.import_module(_module)

__all__ = ["Analysis", "AnalysisFailed", "EvalSet", "ResultsMismatch", "StepContext", "analyze", "get",
           "parse_steps", "load_results", "register", "registry", "resolve", "select_steps", "stored", "unregister"]
