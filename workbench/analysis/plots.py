"""Plotly figures of stored results: the default summary chart of any analysis, and the views particular
analyses give (`Analysis.plot`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr


def summary_figure(table: "pd.DataFrame", title: str = ""):
    """One facet per numeric column: lines over a `step` index, bars over any other index."""
    import plotly.express as px

    table = table.select_dtypes("number")
    flat = table.reset_index()
    index = list(flat.columns[: table.index.nlevels])
    x = index[0]
    if len(index) > 1:
        flat["row"] = flat[index].astype(str).agg(" ".join, axis=1)
        x = "row"
    long = flat.melt(id_vars=[x], value_vars=list(table.columns), var_name="variable")
    over_steps = table.index.name == "step"
    chart = px.line if over_steps else px.bar
    fig = chart(long, x=x, y="value", facet_row="variable", title=title, height=220 * max(1, len(table.columns)),
                **({"markers": True} if over_steps else {}))
    fig.update_yaxes(matches=None, title_text="")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    return fig


def step_frequency_heatmap(match: "xr.DataArray", title: str = ""):
    """Memorisation studies' step × frequency view: `match` [step, sequence] with a `copies` coordinate,
    averaged over the sequences of each copy count."""
    import plotly.express as px

    grid = match.groupby("copies").mean("sequence").transpose("copies", "step")  # [copies, step]
    return px.imshow(grid.values, x=[str(s) for s in grid["step"].values], y=[str(c) for c in grid["copies"].values],
                     labels={"x": "step", "y": "copies in the corpus", "color": "token match"}, zmin=0, zmax=1,
                     aspect="auto", title=title)
