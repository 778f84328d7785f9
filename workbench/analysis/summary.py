"""The default figure of an analysis' results (`Analysis.figure`): its summary table drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


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
