"""What the figures share: heatmaps over (y, x) grids, lines over steps, thinning of long series, and what the
dashboard does to every figure over steps (log step axis, the chosen step marked, the data behind it)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

MAX_POINTS = 2000  # points drawn per line; longer series are thinned evenly, and the figure says so
STEP0_ON_LOG = 0.5  # where step 0 sits on a log step axis: left of step 1, the same for every run
MAX_CELLS = 400_000  # cells drawn per heatmap (300 steps x 96 layers x 96 heads fit, as a head x step map does)
STEP_AXES = ("step", "tokens")  # x-axis titles of figures over training: numeric, log or linear, step A marked
TITLE_WIDTH = 60  # characters per title line
LOG_Y_SPAN = 1e3  # curves whose positive values span this factor or more get a log y axis


@dataclass(frozen=True)
class Thinned:
    """Which of `total` points are drawn (`index`); `note` says so when not all are."""

    index: np.ndarray
    total: int

    @property
    def note(self) -> str:
        shown = len(self.index)
        return "" if shown == self.total else f"showing {shown:,} of {self.total:,} points (evenly thinned)"


def thin(n: int, limit: int = MAX_POINTS) -> Thinned:
    """Evenly spaced indices of at most `limit` of `n` points, first and last included."""
    if n <= limit:
        return Thinned(np.arange(n), n)
    return Thinned(np.unique(np.linspace(0, n - 1, limit).round().astype(int)), n)


def heatmap(z, x, y, title: str, x_title: str, y_title: str, color_title: str = "", zmid: float | None = None,
            note: str = "", clickable: bool = False):
    """A plotly heatmap of `z` [len(y), len(x)]: over steps on the true step scale (each column as wide as the gap
    to its neighbours), other axes categorical; columns are thinned evenly beyond `MAX_CELLS` cells, and the title
    says so. The hover names both axes and the value. `clickable`: a click on a cell selects its row (for
    Streamlit's selection events)."""
    import plotly.graph_objects as go

    z = np.asarray(z, dtype=float)
    if z.size > MAX_CELLS:
        t = thin(z.shape[1], max(1, MAX_CELLS // max(1, z.shape[0])))
        z, x = z[:, t.index], np.asarray(x)[t.index]
        note = "; ".join(filter(None, [note, t.note.replace("points", f"{x_title}s")]))
    numeric_x = x_title in STEP_AXES
    x = np.asarray(x, dtype=float) if numeric_x else [str(v) for v in x]
    y = [str(v) for v in y]

    def hover(value: str) -> str:
        return f"{x_title} %{{x}}<br>{y_title} %{{y}}<br>{color_title or 'value'} %{{{value}:.4g}}<extra></extra>"

    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, zmid=zmid, colorscale="RdBu_r" if zmid is not None else "Viridis",
                               colorbar={"title": {"text": color_title}}, hovertemplate=hover("z")))
    if clickable:
        # Plotly selects no heatmap cell, so Streamlit's selection events never fire on one: an invisible marker per
        # row, hovered by row (hovermode "y": anywhere in the row), is what a click selects; the cell's own hover
        # label stays the heatmap's. One point per row, not per cell: a point per cell cost seconds to draw.
        fig.add_scatter(x=[x[len(x) // 2]] * len(y), y=y, mode="markers", name="", marker={"opacity": 0},
                        showlegend=False, hoverinfo="none")
        fig.update_layout(hovermode="y")
    fig.update_layout(**_titled(title, note), xaxis_title=x_title, yaxis_title=y_title,
                      xaxis_type="linear" if numeric_x else "category", yaxis_type="category")
    return fig


def lines(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, y_title: str, x_title: str = "step"):
    """Lines {name: (x, y)}, each thinned to `MAX_POINTS`; the title notes any thinning. Over steps the x axis is
    linear: `log_step_axis` makes it logarithmic. Positive values spanning `LOG_Y_SPAN` or more get a log y axis."""
    import plotly.graph_objects as go

    fig = go.Figure()
    notes = []
    for name, (x, y) in series.items():
        t = thin(len(x))
        x, y = np.asarray(x)[t.index], np.asarray(y, dtype=float)[t.index]
        fig.add_scatter(x=x, y=y, mode="lines+markers" if len(x) <= 60 else "lines", name=name)
        if t.note:
            notes.append(f"{name}: {t.note}")
    fig.update_layout(**_titled(title, "; ".join(notes)), xaxis_title=x_title, yaxis_title=y_title,
                      legend={"orientation": "h", "y": -0.2})
    return log_y_where_decades(fig)


def panels(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, x_title: str = "step"):
    """A panel per series {name: (x, y)}, stacked over one shared x axis, each on its own y scale (statistics of
    different ranges read apart); long series thinned as `lines` does."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(series), cols=1, shared_xaxes=True, subplot_titles=list(series),
                        vertical_spacing=0.3 / max(1, len(series)))
    notes = []
    for row, (name, (x, y)) in enumerate(series.items(), start=1):
        t = thin(len(x))
        x, y = np.asarray(x)[t.index], np.asarray(y, dtype=float)[t.index]
        fig.add_scatter(x=x, y=y, mode="lines+markers" if len(x) <= 60 else "lines", name=name, row=row, col=1)
        if t.note:
            notes.append(f"{name}: {t.note}")
    fig.update_xaxes(title_text=x_title, row=len(series), col=1)
    return fig.update_layout(**_titled(title, "; ".join(notes)), height=140 + 160 * len(series), showlegend=False)


def log_y_where_decades(fig):
    """A log y axis when every drawn value is positive and they span `LOG_Y_SPAN` or more."""
    finite = _finite_y(fig.data)
    if finite.size and finite.min() > 0 and finite.max() / finite.min() >= LOG_Y_SPAN:
        fig.update_yaxes(type="log", title_text=f"{fig.layout.yaxis.title.text} (log)")
    return fig


def is_step_axis(fig) -> bool:
    """Whether the figure's x axis is training steps (or the tokens seen by them)."""
    return any(axis.title.text in STEP_AXES for axis in fig.select_xaxes())


def log_step_axis(fig):
    """A figure over steps on a log axis: step 0 drawn at `STEP0_ON_LOG` (the same place in every run's curve and
    heatmap) and labelled "0", decades labelled as steps."""
    if "log" in {axis.type for axis in fig.select_xaxes()} or not is_step_axis(fig):
        return fig
    top = 1.0
    for trace in fig.data:
        x = np.asarray(trace.x, dtype=float) if trace.x is not None else np.array([])
        if x.size:
            trace.x = np.where(x > 0, x, STEP0_ON_LOG)
            top = max(top, float(np.nanmax(x)))
    decades = [10**k for k in range(int(np.floor(np.log10(top))) + 2)]
    fig.update_xaxes(type="log", tickvals=[STEP0_ON_LOG, *decades], ticktext=["0", *map(_short, decades)])
    return fig


def _short(n: int) -> str:
    for size, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= size:
            return f"{n // size}{suffix}"
    return str(n)


def mark_step(fig, step: int, label: str = "step A"):
    """A dashed line at `step` across a figure over steps (across every curve, or over every heatmap's step
    column), named "`label` = step"; a figure not over steps, or without that step, is left as it is."""
    if not is_step_axis(fig):
        return fig
    name = f"{label} = {step}"
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    for cells in heatmaps:
        if step in np.asarray(cells.x, dtype=float):
            fig.add_scatter(x=[step, step], y=[cells.y[0], cells.y[-1]], mode="lines", name=name, showlegend=False,
                            line={"dash": "dash", "color": "white", "width": 2}, hoverinfo="skip",
                            xaxis=cells.xaxis, yaxis=cells.yaxis)
    if heatmaps:
        return fig
    for (xaxis, yaxis), traces in _by_axes(fig).items():  # each panel of a figure of several
        finite = _finite_y(traces)
        if finite.size:
            fig.add_scatter(x=[step, step], y=[finite.min(), finite.max()], mode="lines", name=name, showlegend=False,
                            line={"dash": "dash", "color": "grey"}, hoverinfo="skip", xaxis=xaxis, yaxis=yaxis)
    return fig


def _finite_y(traces) -> np.ndarray:
    """Every finite y value the traces draw."""
    ys = [np.asarray(t.y, dtype=float) for t in traces if t.y is not None and len(t.y)]
    return np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])


def _by_axes(fig) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = {}
    for t in fig.data:
        groups.setdefault((t.xaxis or "x", t.yaxis or "y"), []).append(t)
    return groups


def figure_data(fig) -> "pd.DataFrame":
    """The data behind a figure, one row per point (trace, x, y; heatmaps also z): what a chart's CSV holds."""
    import pandas as pd

    frames = []
    for t in fig.data:
        if t.type == "heatmap":
            z = np.asarray(t.z, dtype=float)
            xx, yy = np.meshgrid(np.asarray(t.x), np.asarray(t.y))
            frames.append(pd.DataFrame({"trace": t.name or "", "x": xx.ravel(), "y": yy.ravel(), "z": z.ravel()}))
        elif t.x is not None and t.y is not None and t.hoverinfo != "skip" and t.marker.opacity != 0:
            frames.append(pd.DataFrame({"trace": t.name or "", "x": np.asarray(t.x), "y": np.asarray(t.y)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trace", "x", "y"])


def _titled(title: str, note: str) -> dict:
    """A title wrapped to `TITLE_WIDTH` characters a line (a chart half the page wide cuts longer lines), the
    note below it in small type, and a top margin that fits them."""
    text = "<br>".join(textwrap.wrap(title, TITLE_WIDTH)) + (f"<br><sup>{note}</sup>" if note else "")
    return {"title": text, "margin": {"t": 36 + 24 * (text.count("<br>") + 1), "l": 60, "r": 20, "b": 50}}


def steps_of(ds) -> np.ndarray:
    return np.asarray(ds["step"].values).astype(int)


def nearest_step(ds, step: int | None) -> int:
    """The step of `ds` nearest to `step` (its last when None): a run's view of another run's step A."""
    steps = steps_of(ds)
    return int(steps[-1] if step is None else steps[np.argmin(np.abs(steps - step))])
