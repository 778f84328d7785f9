"""Lens: the logit lens' KL to the final distribution and top-1 agreement, layer × step."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Logit lens", "lens")
left, right = st.columns(2)
left.plotly_chart(wf.layer_step_map(ds, "kl"), key="kl")
right.plotly_chart(wf.layer_step_map(ds, "top1_agreement"), key="top1")
layers = [int(l) for l in ds["layer"].values]
st.plotly_chart(wf.layer_curves(ds, "kl", layers), key="kl-curves")
