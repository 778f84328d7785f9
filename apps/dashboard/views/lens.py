"""Lens: the logit lens' KL to the final distribution and top-1 agreement, layer × step."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Logit lens", "lens")
left, right = st.columns(2)
state.chart(wf.layer_step_map(ds, "kl"), "kl", left)
state.chart(wf.layer_step_map(ds, "top1_agreement"), "top1", right)
layers = [int(l) for l in ds["layer"].values]
state.chart(wf.layer_curves(ds, "kl", layers), "kl-curves")
