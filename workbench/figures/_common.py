"""What the figures share: heatmaps over (y, x) grids, lines over steps, thinning of long series, and what the
dashboard does to every figure over steps (log step axis, the chosen step marked, the data behind it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_POINTS = 2000  # points drawn per line; longer series are thinned evenly, and the figure says so
STEP0_ON_LOG = 0.5  # where step 0 sits on a log step axis: left of step 1, the same for every run
MAX_CELLS = 400_000  # cells drawn per heatmap (300 steps x 96 layers x 96 heads fit, as a head x step map does)


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
    """A plotly heatmap of `z` [len(y), len(x)] with categorical axes (steps are not evenly spaced); columns are
    thinned evenly beyond `MAX_CELLS` cells, and the title says so. The hover names both axes and the value.
    `clickable`: a click on a cell selects its row (for Streamlit's selection events)."""
    import plotly.graph_objects as go

    z = np.asarray(z, dtype=float)
    if z.size > MAX_CELLS:
        t = thin(z.shape[1], max(1, MAX_CELLS // max(1, z.shape[0])))
        z, x = z[:, t.index], np.asarray(x)[t.index]
        note = "; ".join(filter(None, [note, t.note.replace("points", f"{x_title}s")]))
    x, y = [str(v) for v in x], [str(v) for v in y]

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
    fig.update_layout(title=_title(title, note), xaxis_title=x_title, yaxis_title=y_title, xaxis_type="category",
                      yaxis_type="category", margin={"t": 60, "l": 60, "r": 20, "b": 50})
    return fig


def lines(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, y_title: str, x_title: str = "step"):
    """Lines {name: (x, y)}, each thinned to `MAX_POINTS`; the title notes any thinning. Over steps the x axis is
    linear: `log_step_axis` makes it logarithmic."""
    import plotly.graph_objects as go

    fig = go.Figure()
    notes = []
    for name, (x, y) in series.items():
        t = thin(len(x))
        x, y = np.asarray(x)[t.index], np.asarray(y, dtype=float)[t.index]
        fig.add_scatter(x=x, y=y, mode="lines+markers" if len(x) <= 60 else "lines", name=name)
        if t.note:
            notes.append(f"{name}: {t.note}")
    fig.update_layout(title=_title(title, "; ".join(notes)), xaxis_title=x_title, yaxis_title=y_title,
                      margin={"t": 60, "l": 60, "r": 20, "b": 50}, legend={"orientation": "h", "y": -0.2})
    return fig


def is_step_axis(fig) -> bool:
    """Whether the figure's x axis is training steps (titled "step")."""
    return fig.layout.xaxis.title.text == "step"


def log_step_axis(fig):
    """A figure over steps on a log axis: step 0 drawn at `STEP0_ON_LOG` (the same place in every run's curve)
    and labelled "0", decades labelled as steps; a heatmap (categorical steps) is left as it is."""
    if fig.layout.xaxis.type in ("log", "category") or not is_step_axis(fig):
        return fig
    top = 1.0
    for trace in fig.data:
        x = np.asarray(trace.x, dtype=float)
        if x.size:
            trace.x = np.where(x > 0, x, STEP0_ON_LOG)
            top = max(top, float(np.nanmax(x)))
    decades = [10**k for k in range(int(np.floor(np.log10(top))) + 2)]
    fig.update_xaxes(type="log", tickvals=[STEP0_ON_LOG, *decades], ticktext=["0", *map(str, decades)])
    return fig


def mark_step(fig, step: int, label: str = "step A"):
    """A dashed line at `step` across a figure over steps (curves, or a heatmap's step column), named
    "`label` = step"; a figure not over steps, or without that step, is left as it is."""
    if not is_step_axis(fig):
        return fig
    name = f"{label} = {step}"
    if fig.layout.xaxis.type == "category":
        cells = next((t for t in fig.data if t.type == "heatmap"), None)
        if cells is None or str(step) not in [str(v) for v in cells.x]:
            return fig
        fig.add_scatter(x=[str(step)] * 2, y=[cells.y[0], cells.y[-1]], mode="lines", name=name, showlegend=False,
                        line={"dash": "dash", "color": "white", "width": 2}, hoverinfo="skip")
        return fig
    ys = [np.asarray(t.y, dtype=float) for t in fig.data if t.y is not None and len(t.y)]
    finite = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    if not finite.size:
        return fig
    x = STEP0_ON_LOG if step == 0 and fig.layout.xaxis.type == "log" else step
    fig.add_scatter(x=[x, x], y=[finite.min(), finite.max()], mode="lines", name=name, showlegend=False,
                    line={"dash": "dash", "color": "grey"}, hoverinfo="skip")
    return fig


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


def _title(title: str, note: str) -> str:
    return f"{title}<br><sup>{note}</sup>" if note else title


def steps_of(ds) -> np.ndarray:
    return np.asarray(ds["step"].values).astype(int)
