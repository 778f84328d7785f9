"""Any other analysis (a plugin's, say): the figures of its summary table (`workbench.figures.results_figure`)."""

import streamlit as st

from apps.dashboard import state
from workbench.analysis import Analysis, registry
from workbench.figures import results_figure

BUILT_IN = {"weights", "activations", "lens", "similarity", "memorization", "loss", "probes", "evaluation"}
sel = state.selection()
st.title("Other analyses")
names = sorted(set(sel.run.stored_results()) - BUILT_IN)
if not names:
    st.info("Every stored analysis of this run has a page of its own. Analyses added by plugins appear here.")
    st.stop()
name = state.choose("analysis", names, "analysis")
ds = state.results(sel.run, name)
cls = registry().get(name, Analysis)
st.caption(ds.attrs.get("description", ""))
state.chart(results_figure(name, ds, title=name), "summary")
if sel.step in ds["step"].values:
    state.chart(results_figure(name, ds, sel.step, title=f"{name} at step {sel.step}"), "at-step")
st.dataframe(cls.summary(ds))
