"""Results in a run: `results/<name>`, one xarray-compatible Zarr group per analysis (see docs/FORMAT.md).

Layout (any Zarr v3 reader, or `xr.open_zarr(store, group="results/<name>", consolidated=False)`):
- one array per data variable and coordinate of the analysis' Dataset, with a leading `step` dimension for
  per-step variables (`dimension_names` as xarray writes them), chunks of up to 256 steps (fewer for large
  per-step variables, about 1 MiB a chunk) and the other dimensions whole;
- the `step` coordinate holds the training step of each index, in commit order (not sorted; readers sort);
- text coordinates (such as `param`) are variable-length UTF-8 strings;
- group attributes: `kind = "results"`, `description`, and `analysis`: what every stored step was computed
  with (name, kind, parameters, evaluation-set fingerprint when the analysis reads one, code version).

Writers stage updates in a writable session (`RunWriter.write_results` commits them), so a reader sees a
step's results whole or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from workbench.errors import MissingData, UsageError

if TYPE_CHECKING:
    import xarray as xr

RESULTS = "results"
CHUNK_BYTES = 1 << 20
MAX_STEPS_PER_CHUNK = 256


class ResultsMismatch(UsageError):
    """New results that do not fit the stored ones (other parameters, coordinates or variables)."""


@dataclass(frozen=True)
class Stored:
    """What a run holds of one analysis: its steps and the attributes they were computed with."""

    steps: list[int]
    analysis: dict


@dataclass(frozen=True)
class Update:
    """Steps of one analysis to stage: `ds` has a `step` dimension. `replace`: False appends (the steps must be
    new), True drops every stored step first, a collection of steps drops those stored steps first."""

    ds: "xr.Dataset"
    analysis: dict
    description: str = ""
    replace: bool | Collection[int] = False


def group_path(name: str) -> str:
    return f"{RESULTS}/{name}"


def stored(root) -> dict[str, Stored]:
    """Every results group under the run's root group, by analysis name."""
    try:
        group = root[RESULTS]
    except KeyError:
        return {}
    out = {}
    for name, g in sorted(group.groups()):
        try:
            steps = sorted(int(s) for s in g["step"][:])
        except KeyError:
            continue
        out[name] = Stored(steps, dict(g.attrs.get("analysis") or {}))
    return out


def step_coords(root, name: str, names) -> dict[int, dict[str, str]]:
    """{step: {coordinate: text}} of those per-step text coordinates in `names` that results/<name> has."""
    try:
        group = root[group_path(name)]
    except KeyError:
        return {}
    steps = [int(s) for s in group["step"][:]]
    columns = {n: group[n][:] for n in names if n in group}
    return {s: {n: str(v[i]) for n, v in columns.items()} for i, s in enumerate(steps)}


def read(store, root, name: str) -> "xr.Dataset":
    """The stored results of `name`, sorted by step (lazily read: a variable is read when its values are asked
    for; `.chunk()` makes it a dask array); `MissingData` when none are stored."""
    import xarray as xr

    if name not in stored(root):
        raise MissingData(f"no results of {name!r} stored in this run")
    # chunks=None: xarray's own lazy arrays, not dask's (whose import alone costs a dashboard's cold start 0.6 s)
    return xr.open_zarr(store, group=group_path(name), consolidated=False, chunks=None).sortby("step")


def stage(store, name: str, update: Update) -> None:
    """Write `update` into `results/<name>` of a writable session's store (the caller commits).

    Plain `Dataset.to_zarr` on the session's store: the data are in memory, so Icechunk's `to_icechunk`
    (which merges the sessions of distributed Dask writes) is not needed.
    """
    import xarray as xr

    path = group_path(name)
    ds = _texts_as_objects(update.ds)
    ds.attrs = {"kind": "results", "analysis": update.analysis, "description": update.description}
    old = _open(store, path)
    if old is not None and update.replace is not True:
        if update.replace:
            kept = old.drop_sel(step=[s for s in update.replace if s in set(old["step"].values.tolist())]).load()
            if kept.sizes["step"]:
                _check_fits(name, kept, ds)
                ds = xr.concat([kept, ds], dim="step", data_vars="all", coords="minimal", compat="equals",
                               join="exact", combine_attrs="override")
            old = None
        else:
            _check_fits(name, old, ds)
            ds.to_zarr(store, group=path, append_dim="step", consolidated=False, zarr_format=3)
            return
    ds.to_zarr(store, group=path, mode="w", consolidated=False, zarr_format=3, encoding=_encoding(ds))


def _open(store, path: str) -> "xr.Dataset | None":
    """The stored group, lazily indexed without dask (a writable session must not travel to a Dask cluster
    that a `distributed.Client` of this process would hand the reads to)."""
    import xarray as xr

    try:
        return xr.open_zarr(store, group=path, consolidated=False, chunks=None)
    except FileNotFoundError:
        return None


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


def _check_fits(name: str, old: "xr.Dataset", new: "xr.Dataset") -> None:
    where = group_path(name)
    if set(old.data_vars) != set(new.data_vars):
        raise ResultsMismatch(f"{where}: stored variables {sorted(old.data_vars)} differ from the new "
                              f"{sorted(new.data_vars)}; pass --recompute to replace the stored results")
    dup = set(new["step"].values.tolist()) & set(old["step"].values.tolist())
    if dup:
        raise ResultsMismatch(f"{where}: steps {sorted(dup)} are already stored")
    for coord in new.coords:
        var = new[coord].variable
        if coord in new.dims or "step" in var.dims:
            continue
        if coord not in old.coords or old[coord].dims != var.dims or not np.array_equal(old[coord].values, var.values):
            raise ResultsMismatch(f"{where}: coordinate {coord!r} of the new results differs from the stored one "
                                  "(the data it comes from changed?); recompute every step to replace them")
    for dim in new.dims:
        if dim == "step":
            continue
        a = old[dim].values if dim in old.coords else np.arange(old.sizes.get(dim, -1))
        b = new[dim].values if dim in new.coords else np.arange(new.sizes[dim])
        if len(a) != len(b) or not all(x == y for x, y in zip(a.tolist(), b.tolist())):
            raise ResultsMismatch(f"{where}: the new results have other {dim!r} coordinates than the stored "
                                  f"ones; pass --recompute to replace the stored results")
