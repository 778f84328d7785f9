"""Two checkpoints side by side: every stored statistic at A and B with signed differences, and how far the
weights moved, per layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from workbench.api import Run


def compare_statistics(results: dict[str, "xr.Dataset"], a: int, b: int) -> "pd.DataFrame":
    """For each analysis' results ({name: dataset}) holding both steps, its summary rows (`Analysis.summary`
    at a step) at A and B: columns analysis, row, variable, A, B, B − A."""
    import pandas as pd

    from workbench.analysis import Analysis, registry

    rows = []
    for name, ds in results.items():
        steps = set(ds["step"].values.tolist())
        if a not in steps or b not in steps:
            continue
        cls = registry().get(name, Analysis)
        at_a, at_b = cls.summary(ds, a), cls.summary(ds, b)
        if at_a.index.name == "step":  # scalar results: one row per step, indexed by it
            at_a, at_b = at_a.reset_index(drop=True), at_b.reset_index(drop=True)
        for var in at_a.columns.intersection(at_b.columns):
            if var == "step" or not np.issubdtype(at_a[var].dtype, np.number):  # the step is A or B itself
                continue
            for index, va in at_a[var].items():
                vb = at_b[var].get(index, np.nan)
                rows.append({"analysis": name, "row": _label(index), "variable": var, "A": float(va), "B": float(vb),
                             "B − A": float(vb) - float(va)})
    return pd.DataFrame(rows, columns=["analysis", "row", "variable", "A", "B", "B − A"])


def _label(index) -> str:
    if isinstance(index, tuple):
        return " ".join(str(i) for i in index)
    return str(index)


def weight_distances(run: "Run", a: int, b: int) -> "pd.DataFrame":
    """‖W_B − W_A‖_F and its ratio to ‖W_A‖_F per parameter kind and layer (floating-point parameters)."""
    import pandas as pd

    wa, wb = run.checkpoint(a).stacked(), run.checkpoint(b).stacked()
    rows = []
    for template in sorted(wa, key=lambda t: ("{layer}" not in t, t)):
        x, y = wa[template], wb[template]
        if not x.is_floating_point():
            continue
        x, y = x.double(), y.double()
        if "{layer}" not in template:
            x, y = x[None], y[None]
        diff = (y - x).flatten(1).norm(dim=1).numpy()
        base = x.flatten(1).norm(dim=1).numpy()
        for layer, (d, n) in enumerate(zip(diff, base)):
            rows.append({"parameter": template, "layer": layer if "{layer}" in template else -1, "distance": float(d),
                         "relative": float(d / n) if n > 0 else np.nan})
    return pd.DataFrame(rows)


def weight_distance_figure(distances: "pd.DataFrame", a: int, b: int):
    """Relative weight change from A to B per layer, a line per stacked parameter kind."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for template, rows in distances[distances["layer"] >= 0].groupby("parameter"):
        fig.add_scatter(x=rows["layer"], y=rows["relative"], mode="lines+markers", name=template)
    fig.update_layout(title=f"‖W(step {b}) − W(step {a})‖ / ‖W(step {a})‖ per layer", xaxis_title="layer",
                      yaxis_title="relative change", legend={"orientation": "h", "y": -0.25})
    return fig
