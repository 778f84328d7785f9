"""Several runs in one figure: curves overlaid (a colour per run, the same on every page; a run's own series told
apart by dash), maps side by side on one colour scale or as differences from the first run, and any figure over
steps redrawn over the tokens each run had seen by then."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench.figures._common import is_step_axis

if TYPE_CHECKING:
    import plotly.graph_objects as go

DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def palette() -> list[str]:
    """Run i's colour is `palette()[i]`: plotly's default sequence, as a figure with a trace per run draws them."""
    import plotly.colors

    return plotly.colors.qualitative.Plotly


def run_labels(locations: list[str]) -> dict[str, str]:
    """A short label per run location: its last path component, or the whole location where two would clash."""
    short = {loc: loc.rstrip("/").rsplit("/", 1)[-1] or loc for loc in locations}
    clash = {v for v in short.values() if list(short.values()).count(v) > 1}
    return {loc: loc if label in clash else label for loc, label in short.items()}


def overlay(figs: dict[str, "go.Figure"]) -> "go.Figure":
    """Figures of one kind, one per run ({label: figure}), drawn as one with the first's layout (subplots keep
    their axes): run i's traces in `palette()[i]`, each series (by name) in one dash across runs, named
    "label · series" and grouped by run in the legend."""
    import plotly.graph_objects as go

    if len(figs) == 1:
        return next(iter(figs.values()))
    out = go.Figure(layout=next(iter(figs.values())).layout)
    series: list[str] = []
    colours = palette()
    for i, (label, fig) in enumerate(figs.items()):
        colour = colours[i % len(colours)]
        for trace in fig.data:
            name = trace.name or ""
            if name not in series:
                series.append(name)
            trace.update(name=f"{label} · {name}" if name and len(fig.data) > 1 else label, legendgroup=label)
            if trace.type != "scatter":  # bars, say: coloured by run
                trace.update(marker={"color": colour})
            elif trace.fill:
                trace.update(fillcolor=colour)
            else:
                trace.update(line={"color": colour, "dash": DASHES[series.index(name) % len(DASHES)]},
                             marker={"color": colour})
            out.add_trace(trace)
    return out


def side_by_side(figs: dict[str, "go.Figure"], difference: bool = False) -> "go.Figure":
    """Heatmaps of one kind, one per run ({label: figure}), as columns of one figure on one colour scale (titled
    by run), sharing the y axis; `difference`: every run after the first drawn minus the first, where both have
    the same rows and columns, on a diverging scale centred at 0."""
    from plotly.subplots import make_subplots

    if len(figs) == 1:
        return next(iter(figs.values()))
    reference, first = next(iter(figs.items()))
    if difference:
        base = _cells(first)
        figs = {f"{label} − {reference}": _minus(fig, base) for label, fig in list(figs.items())[1:]}
    out = make_subplots(rows=1, cols=len(figs), shared_yaxes=True, subplot_titles=list(figs), horizontal_spacing=0.03)
    for col, fig in enumerate(figs.values(), start=1):
        for trace in fig.data:
            out.add_trace(trace, row=1, col=col)
    cells = [t for t in out.data if t.type == "heatmap"]
    z = np.concatenate([np.asarray(t.z, dtype=float).ravel() for t in cells])
    z = z[np.isfinite(z)]
    centred = difference or first.data[0].zmid is not None
    for t in cells:
        t.update(coloraxis="coloraxis", zmid=None)
    scale = {"colorscale": "RdBu_r", "cmid": 0.0} if centred else {"colorscale": "Viridis"}
    if z.size:
        scale.update(cmin=float(z.min()), cmax=float(z.max()))
    colorbar = first.data[0].colorbar.title.text or ""
    top = (first.layout.margin.t or 60) + 20 + (24 if difference else 0)  # room for the runs' names (and the note)
    out.update_layout(coloraxis={**scale, "colorbar": {"title": {"text": colorbar}}}, title=first.layout.title,
                      margin={**first.layout.margin.to_plotly_json(), "t": top}, hovermode=first.layout.hovermode)
    out.update_xaxes(title_text=first.layout.xaxis.title.text, type=first.layout.xaxis.type)
    out.update_yaxes(type=first.layout.yaxis.type)
    out.update_yaxes(title_text=first.layout.yaxis.title.text, col=1)
    if difference:
        out.update_layout(title_text=f"{first.layout.title.text}<br><sup>each run minus {reference}</sup>")
    return out


def _cells(fig) -> "go.Heatmap":
    return next(t for t in fig.data if t.type == "heatmap")


def _minus(fig, base) -> "go.Figure":
    """`fig` with its heatmap minus `base`'s where they have the same rows and columns (else NaN: not comparable)."""
    import plotly.graph_objects as go

    cells = _cells(fig)
    same = list(map(str, cells.x)) == list(map(str, base.x)) and list(cells.y) == list(base.y)
    z = np.asarray(cells.z, dtype=float) - np.asarray(base.z, dtype=float) if same else np.full(np.shape(cells.z), np.nan)
    return go.Figure([cells.update(z=z)], layout=fig.layout)


def tokens_axis(fig, tokens: dict[str, tuple[np.ndarray, np.ndarray] | None], first: str) -> "go.Figure":
    """A figure over steps redrawn over tokens seen: each trace's steps mapped through its run's (steps, tokens)
    ({label: ..., or None for a run that recorded none}; a trace's run is its legend group where that is a run
    label, else `first`); the x axis titled "tokens". Traces of a run without tokens are left out, and the
    title says which."""
    if not is_step_axis(fig) or fig.layout.xaxis.title.text == "tokens":
        return fig
    kept, missing = [], set()
    for trace in fig.data:
        run = trace.legendgroup if trace.legendgroup in tokens else first
        if tokens.get(run) is None:
            missing.add(run)
            continue
        steps, seen = tokens[run]
        trace.x = np.interp(np.asarray(trace.x, dtype=float), steps, seen)
        kept.append(trace)
    fig.data = kept
    fig.update_xaxes(title_text="tokens")
    if missing:
        fig.update_layout(title_text=f"{fig.layout.title.text}<br><sup>no tokens recorded for "
                                     f"{', '.join(sorted(missing))} (imported)</sup>")
    return fig
