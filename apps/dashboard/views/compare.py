"""Compare: two checkpoints side by side — every stored statistic at A and B, weight distance per layer, and
the memorisation continuations of both."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel = state.selection()
run = sel.run
a, b = sel.step, sel.step_b
st.title(f"Compare step A = {a} with step B = {b}")
st.caption("A and B are the sidebar's steps, as on every page; the differences read B − A (forward in training when "
           "B is the later step).")
state.one_run_caption("the table and the continuations")
holding = sorted(n for n, info in run.stored_results().items() if {a, b} <= set(info.steps))  # read: the chosen one
if not holding:
    st.info("No stored analysis holds both steps; compute them with `wb analyze`.")
else:
    analysis = state.choose("analysis", holding, "analysis")
    table = wf.compare_statistics({analysis: state.results(run, analysis)}, a, b)
    st.dataframe(table.drop(columns="analysis"), hide_index=True)
both = {sel.labels[r.location]: r for r in sel.runs if {a, b} <= set(r.steps)}
if both:
    state.chart(wf.overlay({label: wf.weight_distance_figure(state.weight_distances(r, a, b), a, b)
                            for label, r in both.items()}), "distances")
else:
    st.info("Weight distances need checkpoints at both steps.")
if "memorization" in holding:
    st.subheader("Continuations")
    ex_a, ex_b = (state.memorization_examples(run, s) for s in (a, b))
    both = ex_a[["kind", "canary", "target", "continuation"]].rename(columns={"continuation": f"step {a}"})
    both[f"step {b}"] = ex_b["continuation"].values
    st.dataframe(both, hide_index=True)
