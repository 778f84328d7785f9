"""Activations: residual stream, massive activations, MLP units, and attention heads over training."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Activations", "activations")
st.subheader("Residual stream and MLP units")
columns = st.columns(2)
for i, var in enumerate(("resid_norm", "resid_kurtosis", "massive_ratio", "fire_rate", "dead_units", "rare_units")):
    state.chart(wf.layer_step_map(ds, var), f"map-{var}", columns[i % 2])

st.subheader("Massive activations: which dimensions, from which step")
st.dataframe(wf.massive_dimensions(ds), hide_index=True)

st.subheader("Attention heads")
var = state.choose("statistic", ["sink_mass", "attn_entropy"], "attn")
step = sel.step if sel.step in ds["step"].values else int(ds["step"].values[-1])
state.chart(wf.head_layer_map(ds, var, step), "heads")
left, right = st.columns(2)
layer = state.choose("layer", [int(l) for l in ds["layer"].values], "layer", where=left)
head = state.choose("head", [int(h) for h in ds["head"].values], "head", where=right)
left, right = st.columns(2)
state.chart(wf.layer_step_map(ds, var, head=head), "head-map", left)
state.chart(wf.layer_curves(ds, var, [layer], head=head), "head-curve", right)
