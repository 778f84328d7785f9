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
names = list(run.stored_results())
results = {n: state.results(run, n) for n in names}
table = wf.compare_statistics(results, a, b)
if table.empty:
    st.info("No stored analysis holds both steps; compute them with `wb analyze`.")
else:
    analysis = state.choose("analysis", sorted(table["analysis"].unique()), "analysis")
    st.dataframe(table[table["analysis"] == analysis].drop(columns="analysis"), hide_index=True)
both = {sel.labels[r.location]: r for r in sel.runs if {a, b} <= set(r.steps)}
if both:
    state.chart(wf.overlay({label: wf.weight_distance_figure(state.weight_distances(r, a, b), a, b)
                            for label, r in both.items()}), "distances")
else:
    st.info("Weight distances need checkpoints at both steps.")
if (mem := results.get("memorization")) is not None and {a, b} <= set(mem["step"].values.tolist()):
    st.subheader("Continuations")
    ex_a, ex_b = (state.memorization_examples(run, s) for s in (a, b))
    both = ex_a[["kind", "canary", "target", "continuation"]].rename(columns={"continuation": f"step {a}"})
    both[f"step {b}"] = ex_b["continuation"].values
    st.dataframe(both, hide_index=True)
