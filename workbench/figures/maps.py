"""Layer × step maps and the curves behind a cell, for the per-layer analyses: weights (per parameter kind),
activations (residual stream, MLP units, attention heads), logit lens and CKA similarity."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench.figures._common import heatmap, lines, panels, steps_of

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr


def describe(ds: "xr.Dataset", var: str) -> str:
    attrs = ds[var].attrs
    units = attrs.get("units")
    return attrs.get("description", var) + (f" [{units}]" if units and units != "1" else "")


def layer_grid(ds: "xr.Dataset", var: str, head: int | None = None, rank: int = 0) -> "xr.DataArray":
    """`var` as `[layer, step]`: per-head variables at `head` (or averaged over heads), per-rank ones at `rank`."""
    da = ds[var]
    if "head" in da.dims:
        da = da.sel(head=head) if head is not None else da.mean("head")
    if "rank" in da.dims:
        da = da.sel(rank=rank)
    return da.transpose("layer", "step")


def layer_step_map(ds: "xr.Dataset", var: str, head: int | None = None, rank: int = 0, zmid: float | None = None):
    """A layer × step heatmap of one per-layer variable of activations, lens or similarity results."""
    grid = layer_grid(ds, var, head, rank)
    which = "" if "head" not in ds[var].dims else (f", head {head}" if head is not None else ", mean over heads")
    return heatmap(grid.values, steps_of(ds), grid["layer"].values, f"{var}{which}: {describe(ds, var)}", "step",
                   "layer", var, zmid=zmid)


def layer_curves(ds: "xr.Dataset", var: str, layers, head: int | None = None, rank: int = 0):
    """One per-layer variable over steps, a line per layer in `layers`."""
    grid = layer_grid(ds, var, head, rank)
    steps = steps_of(ds)
    return lines({f"layer {int(l)}": (steps, grid.sel(layer=l).values) for l in layers}, f"{var} over training",
                 var)


# ---------------------------------------------------------------------------------------------- weights

def weight_kinds(ds: "xr.Dataset") -> list[str]:
    """Parameter kinds (HF templates) of weights results, stacked ones (`{layer}`) first."""
    return sorted(set(ds["template"].values.tolist()), key=lambda t: ("{layer}" not in t, t))


def weight_grid(ds: "xr.Dataset", statistic: str, template: str) -> "xr.DataArray":
    """One statistic of one parameter kind as `[layer, step]` (layer -1 for an unstacked parameter)."""
    import xarray as xr

    sub = ds[statistic].isel(param=np.flatnonzero(ds["template"].values == template)).transpose("param", "step")
    grid = xr.DataArray(sub.values, dims=("layer", "step"),
                        coords={"layer": sub["layer"].values, "step": sub["step"].values}, name=statistic)
    return grid.sortby("layer")


def weight_map(ds: "xr.Dataset", statistic: str, template: str):
    """A layer × step heatmap of one weights statistic for one parameter kind."""
    grid = weight_grid(ds, statistic, template)
    return heatmap(grid.values, steps_of(ds), grid["layer"].values, f"{statistic} of {template}", "step", "layer",
                   statistic, clickable=True)  # a click opens the layer's curves


def weight_curves(ds: "xr.Dataset", statistics: list[str], template: str, layer: int):
    """Statistics of one matrix (`template` at `layer`; -1 when unstacked) over steps: one on its own axes, or
    several in a panel each."""
    name = template.format(layer=layer) if "{layer}" in template else template
    one = ds.sel(param=name)
    steps = steps_of(ds)
    series = {s: (steps, one[s].values) for s in statistics}
    if len(statistics) == 1:
        return lines(series, f"{name} over training", describe(ds, statistics[0]))
    return panels(series, f"{name} over training")


# ---------------------------------------------------------------------------------------------- activations

def head_layer_map(ds: "xr.Dataset", var: str, step: int):
    """A head × layer heatmap of a per-head variable (attention entropy, sink mass) at one step."""
    one = ds[var].sel(step=step).transpose("layer", "head")
    return heatmap(one.values, one["head"].values, one["layer"].values, f"{var} at step {step}: {describe(ds, var)}",
                   "head", "layer", var)


def massive_dimensions(ds: "xr.Dataset") -> "pd.DataFrame":
    """Which model dimensions carry each layer's largest residual-stream entry, and from which step: per
    (layer, dimension) the first and last step it is the top entry, its largest ratio to mean |x| and how many
    steps it holds the top."""
    import pandas as pd

    top = ds[["massive_dim", "massive_ratio"]].sel(rank=0).load()
    rows = []
    for layer in top["layer"].values:
        dims = top["massive_dim"].sel(layer=layer).values
        ratios = top["massive_ratio"].sel(layer=layer).values
        steps = steps_of(top)
        for dim in np.unique(dims):
            at = dims == dim
            rows.append({"layer": int(layer), "dimension": int(dim), "first step": int(steps[at].min()),
                         "last step": int(steps[at].max()), "steps on top": int(at.sum()),
                         "max ratio": float(ratios[at].max())})
    return pd.DataFrame(rows).sort_values(["layer", "first step"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- similarity

def cka_map(ds: "xr.Dataset", step: int):
    """Linear CKA between the layers at one step, layer × layer."""
    one = ds["cka"].sel(step=step)
    return heatmap(one.values, one["other_layer"].values, one["layer"].values, f"CKA between layers at step {step}",
                   "layer", "layer", "CKA")
