"""Overview: the run card, training curves, held-out loss per domain, and which analyses are stored."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state
from workbench.store.hf import format_size

sel = state.selection()
run = sel.run
st.title("Overview")
card = wf.run_card(run)
card["parameters"] = f"{card['parameters'] / 1e6:,.2f} M" if card["parameters"] >= 1e5 else f"{card['parameters']:,}"
card["bytes on disk"] = format_size(card["bytes on disk"]) if card["bytes on disk"] is not None else None
columns = st.columns(4)
for i, (key, value) in enumerate(card.items()):
    columns[i % 4].markdown(f"**{key}**  \n{value if value is not None else '—'}")
if len(sel.runs) > 1:
    st.subheader("Runs")
    st.caption("every open run, with the settings in which they differ; curves below overlay them all")
    st.dataframe(wf.run_table(list(sel.runs)), hide_index=True)
with st.expander("model and training config"):
    st.json({"model_config": run.model_config, "train_config": run.train_config}, expanded=False)

st.subheader("Training")
metrics = {sel.labels[r.location]: m for r in sel.runs if (m := state.metrics(r)) is not None}
if not metrics:
    st.info(f"{run.location} records no training metrics (an imported run): nothing to plot here.")
else:
    smoothing = st.slider("smoothing", 0.0, 0.99, 0.6, 0.01, key="smoothing", bind="query-params")
    columns = st.columns(2)
    for i, column in enumerate(wf.overview.METRICS):
        state.chart(wf.metrics_figure(metrics, column, smoothing), f"metric-{column}", columns[i % 2])

st.subheader("Held-out loss")
if state.per_run("loss"):
    state.runs_chart("loss", wf.heldout_loss_figure, "heldout")
else:
    state.missing(run, "loss")

st.subheader("Stored analyses")
table = wf.coverage(run)
st.dataframe(table, hide_index=True)
if (table["missing"] > 0).any():
    st.code("\n".join(table.loc[table["missing"] > 0, "command"]), language="bash")
