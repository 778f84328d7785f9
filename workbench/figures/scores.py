"""Task scores over training: curves with standard-error bands and the chance level, and per planted fact its
recall against how often it had been seen."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench.figures._common import heatmap, steps_of

if TYPE_CHECKING:
    import xarray as xr


def rolling(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` neighbouring checkpoints (NaN ignored; 1: the values)."""
    if window <= 1:
        return np.asarray(values, dtype=float)
    v = np.asarray(values, dtype=float)
    half = window // 2
    return np.array([np.nanmean(v[max(0, i - half): i + half + 1]) if np.isfinite(v[max(0, i - half): i + half + 1]).any()
                     else np.nan for i in range(len(v))])


GENERATED = ("exact_match", "char_f1")  # scores of generations; the others are of multiple-choice items


def item_count(ds: "xr.Dataset", var: str, task) -> int:
    """How many items `var` of `task` averages (its most at any step): what one item moves it by is 1 / that."""
    count = ds["n_generation" if var in GENERATED else "n_choice"].sel(task=task)
    return int(count.max()) if count.size else 0


def score_curves(ds: "xr.Dataset", var: str, tasks=None, window: int = 1, split: bool = False):
    """`var` of each task over steps, smoothed over `window` checkpoints, with a ± standard-error band and, for
    accuracies, the chance level in the task's colour; each task named with its item count. `split`: one panel
    per task (shared step axis) instead of every task on one plot."""
    import plotly.colors
    from plotly.subplots import make_subplots

    steps = steps_of(ds)
    shown = [t for t in (tasks if tasks is not None else ds["task"].values)
             if np.isfinite(ds[var].sel(task=t).values.astype(float)).any()]
    names = [f"{t} ({item_count(ds, var, t)} items)" for t in shown]
    rows = -(-len(shown) // 2) if split else 1
    fig = make_subplots(rows=max(rows, 1), cols=2 if split and len(shown) > 1 else 1, shared_xaxes=True,
                        subplot_titles=names if split else None, vertical_spacing=0.08)
    palette = plotly.colors.qualitative.Plotly
    for i, (task, name) in enumerate(zip(shown, names)):
        colour = palette[i % len(palette)]
        at = {"row": i // 2 + 1, "col": i % 2 + 1} if split else {"row": 1, "col": 1}
        y = rolling(ds[var].sel(task=task).values.astype(float), window)
        err = rolling(ds[f"{var}_stderr"].sel(task=task).values, window) if f"{var}_stderr" in ds else None
        if err is not None and np.isfinite(err).any():
            fig.add_scatter(x=np.concatenate([steps, steps[::-1]]), y=np.concatenate([y + err, (y - err)[::-1]]),
                            fill="toself", line={"width": 0}, fillcolor=colour, opacity=0.2, name=f"{name} ± s.e.",
                            showlegend=False, hoverinfo="skip", legendgroup=name, **at)
        fig.add_scatter(x=steps, y=y, mode="lines+markers", name=name, line={"color": colour}, legendgroup=name,
                        hovertemplate=f"{task}<br>step %{{x}}<br>{var} %{{y:.4g}}<extra></extra>", **at)
        if var.startswith("accuracy") and "chance" in ds:
            fig.add_scatter(x=steps, y=ds["chance"].sel(task=task).values, mode="lines", name=f"{task}: chance",
                            line={"dash": "dot", "color": colour}, legendgroup=name, showlegend=False,
                            hovertemplate=f"{task}: chance %{{y:.3g}}<extra></extra>", **at)
    smoothed = f" (mean over {window} checkpoints)" if window > 1 else ""
    fig.update_layout(title=f"{var}{smoothed}", legend={"orientation": "h", "y": -0.25},
                      height=max(450, 260 * rows) if split else 450)
    fig.update_xaxes(title_text="step", row=rows, col=1)
    fig.update_yaxes(title_text=var, col=1)
    return fig


def fact_recall_map(ds: "xr.Dataset", task: str, var: str = "fact_gold_logprob"):
    """Per fact the task asks, `fact_correct` or `fact_gold_logprob` by step."""
    grid = ds[var].sel(task=task).dropna("fact", how="all").transpose("fact", "step")
    return heatmap(grid.values, steps_of(ds), grid["fact"].values, f"{task}: {var} per fact", "step", "fact", var)


def exposure_recall(ds: "xr.Dataset", task: str):
    """Per fact the task asks, its gold log-likelihood against how many training batches had held it by then:
    recall read against exposure (a line per fact, one point per checkpoint)."""
    import plotly.graph_objects as go

    asked = ds["fact_gold_logprob"].sel(task=task).dropna("fact", how="all")["fact"].values
    fig = go.Figure()
    for fact in asked:
        fig.add_scatter(x=ds["fact_times_seen"].sel(fact=fact).values, y=ds["fact_gold_logprob"].sel(task=task, fact=fact).values,
                        mode="lines+markers", name=str(fact), text=[f"step {s}" for s in steps_of(ds)])
    fig.update_layout(title=f"{task}: recall against exposure", xaxis_title="training batches that held the fact",
                      yaxis_title="log-likelihood of its object (nats)", legend={"orientation": "h", "y": -0.25})
    return fig
