"""Results in a run: `results/<name>`, one xarray-compatible Zarr group per analysis.

Layout (any Zarr v3 reader, or `xr.open_zarr(store, group="results/<name>", consolidated=False)`):
- one array per data variable and coordinate of the analysis' Dataset, with a leading `step` dimension for
  per-step variables (`_ARRAY_DIMENSIONS` / `dimension_names` as xarray writes them), chunks of up to 256
  steps (fewer for large per-step variables, about 1 MiB a chunk) and the other dimensions whole;
- the `step` coordinate holds the training step of each index, in commit order (not sorted; readers sort);
- text coordinates (such as `param`) are variable-length UTF-8 strings;
- group attributes: `kind = "results"` and `analysis = {name, kind, params, eval_set, code_version}`:
  the parameters (and evaluation-set fingerprint) every stored step was computed with.

The driver appends the steps finished since its last commit in one Icechunk commit (message
`results <name> steps ...`, metadata `{"results": {name: [steps]}}`), so a reader sees a step's results
whole or not at all, and an interrupted analysis keeps everything committed before.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from workbench.errors import UsageError

if TYPE_CHECKING:
    import xarray as xr

    from workbench.analysis.engine import Analysis
    from workbench.analysis.evalset import EvalSet
    from workbench.store.run import Run

RESULTS = "results"
CHUNK_BYTES = 1 << 20
MAX_STEPS_PER_CHUNK = 256


class ResultsMismatch(UsageError):
    """New results that do not fit the stored ones (other parameters, coordinates or variables)."""


def group_path(name: str) -> str:
    return f"{RESULTS}/{name}"


def analysis_attrs(analysis: "Analysis", eval_set: "EvalSet | None") -> dict:
    from workbench.store.writer import code_version

    return {"name": analysis.name, "kind": analysis.kind, "params": analysis.config(),
            "eval_set": eval_set.fingerprint if eval_set is not None else None, "code_version": code_version()}


def stored(run: "Run") -> dict[str, dict]:
    """{name: {"steps": sorted steps, "analysis": stored attributes}} for every results group of `run`."""
    try:
        group = run.root[RESULTS]
    except KeyError:
        return {}
    out = {}
    for name, g in sorted(group.groups()):
        try:
            steps = sorted(int(s) for s in g["step"][:])
        except KeyError:
            continue
        out[name] = {"steps": steps, "analysis": g.attrs.get("analysis") or {}}
    return out


def check_compatible(run: "Run", analysis: "Analysis", eval_set: "EvalSet | None") -> list[int]:
    """The steps already stored for `analysis`; `ResultsMismatch` if they were computed differently."""
    info = stored(run).get(analysis.name)
    if info is None:
        return []
    have, want = info["analysis"], analysis_attrs(analysis, eval_set)
    for key, what in (("params", "parameters"), ("eval_set", "evaluation set")):
        if have.get(key) != want[key]:
            raise ResultsMismatch(
                f"{group_path(analysis.name)} in {run.location} was computed with {what} {have.get(key)!r}, "
                f"not {want[key]!r}; pass --recompute (recompute=True) to replace those results")
    return info["steps"]


def load(run: "Run", name: str) -> "xr.Dataset":
    """The stored results of `name`, sorted by step (lazily read)."""
    import xarray as xr

    have = stored(run)
    if name not in have:
        from workbench.analysis.engine import registry

        hint = f"stored: {', '.join(have)}" if have else "none stored yet"
        if name in registry():
            raise UsageError(f"no results of {name!r} in {run.location} ({hint}); compute them with "
                             f"`wb analyze {run.location} --only {name}`")
        raise UsageError(f"no results of {name!r} in {run.location} ({hint}); {name!r} is not an analysis "
                         f"(valid analyses: {', '.join(registry())})")
    ds = xr.open_zarr(run.store, group=group_path(name), consolidated=False)
    return ds.sortby("step")


def _encoding(ds: "xr.Dataset") -> dict:
    enc = {}
    for name, var in ds.variables.items():
        shape = dict(var.sizes)
        if "step" in shape:
            per_step = max(1, math.prod(v for d, v in shape.items() if d != "step")) * max(var.dtype.itemsize, 8)
            steps = int(min(MAX_STEPS_PER_CHUNK, max(1, CHUNK_BYTES // per_step)))
            enc[name] = {"chunks": tuple(steps if d == "step" else max(1, shape[d]) for d in var.dims)}
        elif var.ndim:
            enc[name] = {"chunks": tuple(max(1, n) for n in var.shape)}
    return enc


def _texts_as_objects(ds: "xr.Dataset") -> "xr.Dataset":
    """Text arrays as Python objects, which xarray stores as Zarr variable-length UTF-8 strings (a fixed
    width would truncate a longer name appended later)."""
    for name, var in ds.variables.items():
        if var.dtype.kind in "UT" or (var.dtype.kind == "O" and var.size and isinstance(var.values.flat[0], str)):
            ds = ds.assign_coords({name: var.astype(object)}) if name in ds.coords else ds.assign({name: var.astype(object)})
    return ds


def write(session, analysis: "Analysis", ds: "xr.Dataset", attrs: dict, exists: bool, replace: bool = False) -> None:
    """Stage `ds` (a `step` dimension, steps not yet stored) in `results/<name>` of a writable session.

    Plain `Dataset.to_zarr` on the session's store: the data are in memory, so Icechunk's `to_icechunk`
    (which merges the sessions of distributed Dask writes) is not needed; icechunk 1.1's `to_icechunk` also
    fails on xarray >= 2025.11, which dropped the `synchronizer` argument it passes.
    """
    import xarray as xr

    path = group_path(analysis.name)
    ds = _texts_as_objects(ds)
    ds.attrs = {"kind": "results", "analysis": attrs, "description": analysis.description}
    if exists and not replace:
        old = xr.open_zarr(session.store, group=path, consolidated=False)
        _check_fits(analysis.name, old, ds)
        ds.to_zarr(session.store, group=path, append_dim="step", consolidated=False, zarr_format=3)
    else:
        ds.to_zarr(session.store, group=path, mode="w" if replace else "w-", consolidated=False, zarr_format=3,
                   encoding=_encoding(ds))


def _check_fits(name: str, old: "xr.Dataset", new: "xr.Dataset") -> None:
    where = group_path(name)
    if set(old.data_vars) != set(new.data_vars):
        raise ResultsMismatch(f"{where}: stored variables {sorted(old.data_vars)} differ from the new "
                              f"{sorted(new.data_vars)}; pass --recompute to replace the stored results")
    dup = set(new["step"].values.tolist()) & set(old["step"].values.tolist())
    if dup:
        raise ResultsMismatch(f"{where}: steps {sorted(dup)} are already stored")
    for dim in new.dims:
        if dim == "step":
            continue
        a = old[dim].values if dim in old.coords else np.arange(old.sizes.get(dim, -1))
        b = new[dim].values if dim in new.coords else np.arange(new.sizes[dim])
        if len(a) != len(b) or not all(x == y for x, y in zip(a.tolist(), b.tolist())):
            raise ResultsMismatch(f"{where}: the new results have other {dim!r} coordinates than the stored "
                                  f"ones; pass --recompute to replace the stored results")
