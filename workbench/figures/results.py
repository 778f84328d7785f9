"""The figure of any analysis' stored results, as `wb results --plot` writes it and the dashboard's page of a
plugin's analysis shows it: the analysis' summary table (`Analysis.summary`) as lines over the steps, or bars
at one step; memorisation without a step as the canaries' step × copies map, its studies' view."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr


def results_figure(name: str, ds: "xr.Dataset", step: int | None = None, title: str = ""):
    """The figure of analysis `name`'s results `ds` (at `step`, or over the steps)."""
    from workbench.analysis import Analysis, provenance, registry
    from workbench.figures.texts import canary_map

    ds = provenance.without(ds)
    if name == "memorization" and step is None and "canary" in set(ds["kind"].values.tolist()):
        return canary_map(ds, title)
    return summary_figure(registry().get(name, Analysis).summary(ds, step), title)


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
