"""Which stored results an analysis can build on: results are judged on what the analysis depends on (its
parameters, and the evaluation set only when it reads one). The bytes are read and written by the store
(`workbench.store.results`, specified in docs/FORMAT.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.errors import MissingData, UsageError
from workbench.store.results import ResultsMismatch, group_path

if TYPE_CHECKING:
    import xarray as xr

    from workbench.analysis.base import Analysis
    from workbench.analysis.evalset import EvalSet
    from workbench.store.run import Run


def analysis_attrs(analysis: "Analysis", eval_set: "EvalSet | None") -> dict:
    """What is stored with the results: name, kind, parameters, evaluation-set fingerprint (None unless the
    analysis reads it) and code version."""
    from workbench.store.writer import code_version

    reads = analysis.needs_eval_set() and eval_set is not None
    return {"name": analysis.name, "kind": analysis.kind, "params": analysis.config(),
            "eval_set": eval_set.fingerprint if reads else None, "code_version": code_version()}


def difference(analysis: "Analysis", stored: dict, eval_set: "EvalSet | None") -> str | None:
    """How results stored with attributes `stored` were computed differently from what `analysis` would
    compute now (None when they can be reused): its parameters, or the evaluation set it reads."""
    want = analysis_attrs(analysis, eval_set)
    keys = [("params", "parameters")] + ([("eval_set", "evaluation set")] if analysis.needs_eval_set() else [])
    for key, what in keys:
        if stored.get(key) != want[key]:
            return f"{what} {stored.get(key)!r}, not {want[key]!r}"
    return None


def compatible_steps(run: "Run", analysis: "Analysis", eval_set: "EvalSet | None") -> list[int]:
    """The steps stored for `analysis`; `ResultsMismatch` if they were computed differently."""
    info = run.stored_results().get(analysis.name)
    if info is None:
        return []
    if why := difference(analysis, info.analysis, eval_set):
        raise ResultsMismatch(f"{group_path(analysis.name)} in {run.location} was computed with {why}; "
                              "pass --recompute (recompute=True) to replace those results")
    return info.steps


def load(run: "Run", name: str) -> "xr.Dataset":
    """The stored results of `name`, sorted by step (lazily read); the error says how to compute them."""
    from workbench.analysis.registry import registry

    try:
        return run.read_results(name)
    except MissingData:
        have = run.stored_results()
        hint = f"stored: {', '.join(have)}" if have else "none stored yet"
        if name in registry():
            raise MissingData(f"no results of {name!r} in {run.location} ({hint}); compute them with "
                              f"`wb analyze {run.location} --only {name}`") from None
        raise UsageError(f"no results of {name!r} in {run.location} ({hint}); {name!r} is not an analysis "
                         f"(valid analyses: {', '.join(registry())})") from None
