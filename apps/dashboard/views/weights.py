"""Weights: every statistic as a layer × step heatmap per parameter kind; a chosen cell opens its curves."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state
from workbench.analyses.weights import STATISTICS

sel, ds = state.page_of("Weights", "weights")
left, right = st.columns(2)
statistic = state.choose("statistic", list(STATISTICS), "statistic", where=left)
kinds = wf.weight_kinds(ds)
kind = state.choose("parameter", kinds, "param", where=right)
clicked = state.runs_chart("weights", lambda d: wf.weight_map(d, statistic, kind), "map", on_select="rerun",
                           selection_mode="points")
layers = sorted(int(l) for l in wf.maps.weight_grid(ds, statistic, kind)["layer"].values)
if points := (clicked.selection.points if clicked else None):  # a chosen cell: its layer's curves
    state.pick("layer", int(points[0]["y"]))
layer = state.choose("layer", layers, "layer")
state.runs_chart("weights", lambda d: wf.weight_curves(d, [statistic], kind, layer), "curves")
with st.expander("every statistic of this matrix"):
    state.runs_chart("weights", lambda d: wf.weight_curves(d, list(STATISTICS), kind, layer), "all-curves")
