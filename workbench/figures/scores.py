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


def score_curves(ds: "xr.Dataset", var: str, tasks=None, window: int = 1):
    """`var` of each task over steps, smoothed over `window` checkpoints, with a ± standard-error band and, for
    accuracies, the chance level."""
    import plotly.graph_objects as go

    steps = steps_of(ds)
    fig = go.Figure()
    for task in tasks if tasks is not None else ds["task"].values:
        y = ds[var].sel(task=task).values.astype(float)
        if not np.isfinite(y).any():
            continue
        y = rolling(y, window)
        err = rolling(ds[f"{var}_stderr"].sel(task=task).values, window) if f"{var}_stderr" in ds else None
        if err is not None and np.isfinite(err).any():
            fig.add_scatter(x=np.concatenate([steps, steps[::-1]]), y=np.concatenate([y + err, (y - err)[::-1]]),
                            fill="toself", line={"width": 0}, opacity=0.2, name=f"{task} ± s.e.", showlegend=False,
                            hoverinfo="skip")
        fig.add_scatter(x=steps, y=y, mode="lines+markers", name=str(task))
        if var.startswith("accuracy") and "chance" in ds:
            fig.add_scatter(x=steps, y=ds["chance"].sel(task=task).values, mode="lines", name=f"{task}: chance",
                            line={"dash": "dot"})
    smoothed = f" (mean over {window} checkpoints)" if window > 1 else ""
    fig.update_layout(title=f"{var}{smoothed}", xaxis_title="step", yaxis_title=var,
                      legend={"orientation": "h", "y": -0.25})
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
