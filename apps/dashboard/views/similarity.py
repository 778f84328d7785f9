"""Similarity: linear CKA between layers at a step, and of each layer with the previous checkpoint."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Similarity", "similarity")
step = sel.step if sel.step in ds["step"].values else int(ds["step"].values[-1])
left, right = st.columns(2)
state.chart(wf.cka_map(ds, step), "cka", left)
state.chart(wf.layer_step_map(ds, "cka_prev"), "cka-prev", right)
