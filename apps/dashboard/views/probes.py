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
left.plotly_chart(wf.probe_map(ds, "accuracy", task), key="accuracy")
right.plotly_chart(wf.probe_map(ds, "selectivity", task), key="selectivity")
if any(str(t) for t in ds["transfer_task"].values):
    layer = state.choose("layer", [int(l) for l in ds["layer"].values], "layer", default=int(ds["layer"].values[-1]))
    st.plotly_chart(wf.transfer_curves(ds, layer), key="transfer")
left, right = st.columns(2)
left.plotly_chart(wf.direction_drift(ds, task, "previous"), key="drift-prev")
right.plotly_chart(wf.direction_drift(ds, task, "final"), key="drift-final")
