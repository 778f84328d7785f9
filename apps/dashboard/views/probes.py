"""Probes: per task, what each layer linearly encodes over training (accuracy, selectivity against the control
task), cross-lingual transfer, and how the probe directions drift."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Probes", "probes")
task = state.choose("task", [str(t) for t in ds["task"].values], "task")
st.caption("Layer 0 is the embeddings. A label that is a function of the token (script) is decodable at step 0: "
           "read accuracy against the control task (selectivity) and the step-0 column. Baseline (majority class): "
           f"{float(ds['majority'].sel(task=task).isel(step=-1)):.3f}.")
left, right = st.columns(2)
state.runs_chart("probes", lambda d: wf.probe_map(d, "accuracy", task), "accuracy", left)
state.runs_chart("probes", lambda d: wf.probe_map(d, "selectivity", task), "selectivity", right)
if any(str(t) for t in ds["transfer_task"].values):
    layer = state.choose("layer", [int(l) for l in ds["layer"].values], "layer", default=int(ds["layer"].values[-1]))
    state.runs_chart("probes", lambda d: wf.transfer_curves(d, layer), "transfer")
left, right = st.columns(2)
state.runs_chart("probes", lambda d: wf.direction_drift(d, task, "previous"), "drift-prev", left)
state.runs_chart("probes", lambda d: wf.direction_drift(d, task, "final"), "drift-final", right)
