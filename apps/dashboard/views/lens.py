"""Lens: the logit lens' KL to the final distribution and top-1 agreement, layer × step."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Logit lens", "lens")
left, right = st.columns(2)
state.runs_chart("lens", lambda d: wf.layer_step_map(d, "kl"), "kl", left)
state.runs_chart("lens", lambda d: wf.layer_step_map(d, "top1_agreement"), "top1", right)
state.runs_chart("lens", lambda d: wf.layer_curves(d, "kl", [int(l) for l in d["layer"].values]), "kl-curves")
