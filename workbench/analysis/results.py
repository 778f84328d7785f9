"""Stored results as the analysis layer sees them: the group attributes written with them and their loading
with errors that say how to compute them. Whether a stored step is current is `workbench.analysis.provenance`'s;
the bytes are read and written by the store (`workbench.store.results`, specified in docs/FORMAT.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.errors import MissingData, UsageError

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
