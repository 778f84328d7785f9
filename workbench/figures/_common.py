"""What the figures share: heatmaps over (y, x) grids, lines over steps, and thinning of long series."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_POINTS = 2000  # points drawn per line; longer series are thinned evenly, and the figure says so
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
            note: str = ""):
    """A plotly heatmap of `z` [len(y), len(x)] with categorical axes (steps are not evenly spaced); columns are
    thinned evenly beyond `MAX_CELLS` cells, and the title says so."""
    import plotly.graph_objects as go

    z = np.asarray(z, dtype=float)
    if z.size > MAX_CELLS:
        t = thin(z.shape[1], max(1, MAX_CELLS // max(1, z.shape[0])))
        z, x = z[:, t.index], np.asarray(x)[t.index]
        note = "; ".join(filter(None, [note, t.note.replace("points", f"{x_title}s")]))
    x, y = [str(v) for v in x], [str(v) for v in y]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, zmid=zmid, colorscale="RdBu_r" if zmid is not None else "Viridis",
                               colorbar={"title": {"text": color_title}}, hoverinfo="skip"))
    # Plotly selects no heatmap cell, so Streamlit's selection events never fire on one: an invisible marker on
    # every cell is what a click selects (the nearest, at any distance: anywhere in the cell), and what hovers.
    cells_x, cells_y = np.meshgrid(x, y)  # [len(y), len(x)] each
    fig.add_scatter(x=cells_x.ravel(), y=cells_y.ravel(), customdata=z.ravel(), mode="markers", name="",
                    marker={"opacity": 0}, showlegend=False,
                    hovertemplate=f"{x_title} %{{x}}<br>{y_title} %{{y}}<br>{color_title or 'value'} %{{customdata:.4g}}<extra></extra>")
    fig.update_layout(title=_title(title, note), xaxis_title=x_title, yaxis_title=y_title, xaxis_type="category",
                      yaxis_type="category", hoverdistance=-1, margin={"t": 60, "l": 60, "r": 20, "b": 50})
    return fig


def lines(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, y_title: str, log_x: bool = False,
          x_title: str = "step"):
    """Lines {name: (x, y)}, each thinned to `MAX_POINTS`; the title notes any thinning."""
    import plotly.graph_objects as go

    fig = go.Figure()
    notes = []
    for name, (x, y) in series.items():
        t = thin(len(x))
        x, y = np.asarray(x)[t.index], np.asarray(y, dtype=float)[t.index]
        if log_x:  # log axes cannot show step 0: draw it at the smallest positive step's half
            x = np.where(x > 0, x, (x[x > 0].min() / 2) if (x > 0).any() else 1)
        fig.add_scatter(x=x, y=y, mode="lines+markers" if len(x) <= 60 else "lines", name=name)
        if t.note:
            notes.append(f"{name}: {t.note}")
    fig.update_layout(title=_title(title, "; ".join(notes)), xaxis_title=x_title, yaxis_title=y_title,
                      xaxis_type="log" if log_x else "linear", margin={"t": 60, "l": 60, "r": 20, "b": 50},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def _title(title: str, note: str) -> str:
    return f"{title}<br><sup>{note}</sup>" if note else title


def steps_of(ds) -> np.ndarray:
    return np.asarray(ds["step"].values).astype(int)
