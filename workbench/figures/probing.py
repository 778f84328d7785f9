"""Probe results over training: what each layer encodes (accuracy and selectivity, layer × step), cross-lingual
transfer, and the drift of probe directions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench.figures._common import heatmap, lines, steps_of

if TYPE_CHECKING:
    import xarray as xr


def probe_map(ds: "xr.Dataset", var: str, task: str):
    """One probe score (`accuracy`, `selectivity`, `control_accuracy`, ...) of one task as a layer × step map
    (layer 0: the embeddings)."""
    grid = ds[var].sel(task=task).transpose("layer", "step")
    return heatmap(grid.values, steps_of(ds), grid["layer"].values, f"{task}: {var}", "step", "layer (0: embeddings)",
                   var, zmid=0.0 if var == "selectivity" else None)


def transfer_curves(ds: "xr.Dataset", layer: int):
    """At one layer, each transfer task's own test accuracy and its accuracy on the other language, with the
    majority-class baselines."""
    steps = steps_of(ds)
    series = {}
    for task in ds["task"].values:
        other = str(ds["transfer_task"].sel(task=task).values)
        if not other:
            continue
        at = ds.sel(task=task, layer=layer)
        series[f"{task} (own test)"] = (steps, at["accuracy"].values)
        series[f"{task} → {other}"] = (steps, at["transfer_accuracy"].values)
        series[f"{task} → {other}: majority class"] = (steps, at["transfer_majority"].values)
    return lines(series, f"cross-lingual transfer at layer {layer}", "test accuracy")


def direction_cosines(ds: "xr.Dataset", task: str) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each (layer, step)'s probe direction (every class, flattened) with the previous step's and with
    the final step's: two `[layer, step]` arrays (NaN at the first step for the previous)."""
    w = ds["direction"].sel(task=task).transpose("layer", "step", "class", "dim").values.astype(np.float64)
    w = np.nan_to_num(w).reshape(*w.shape[:2], -1)  # [layer, step, class * dim]
    unit = w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-30)
    to_prev = np.full(unit.shape[:2], np.nan)
    to_prev[:, 1:] = (unit[:, 1:] * unit[:, :-1]).sum(-1)
    to_final = (unit * unit[:, -1:]).sum(-1)
    return to_prev, to_final


def direction_drift(ds: "xr.Dataset", task: str, against: str = "previous"):
    """The drift of `task`'s probe directions: cosine with the previous step's (`against="previous"`) or with the
    final step's, as a layer × step map."""
    to_prev, to_final = direction_cosines(ds, task)
    grid = to_prev if against == "previous" else to_final
    return heatmap(grid, steps_of(ds), ds["layer"].values, f"{task}: cosine of the probe direction with the "
                   f"{against} step's", "step", "layer", "cosine")
