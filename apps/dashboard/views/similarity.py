"""Similarity: linear CKA between layers at a step, and of each layer with the previous checkpoint."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Similarity", "similarity")
step = sel.step if sel.step in ds["step"].values else int(ds["step"].values[-1])
left, right = st.columns(2)
left.plotly_chart(wf.cka_map(ds, step), key="cka")
right.plotly_chart(wf.layer_step_map(ds, "cka_prev"), key="cka-prev")
