"""Similarity: linear CKA between layers at a step, and of each layer with the previous checkpoint."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Similarity", "similarity")
left, right = st.columns(2)
state.runs_chart("similarity", lambda d: wf.cka_map(d, wf.nearest_step(d, sel.step)), "cka", left)
state.runs_chart("similarity", lambda d: wf.layer_step_map(d, "cka_prev"), "cka-prev", right)
