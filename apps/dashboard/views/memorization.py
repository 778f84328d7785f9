"""Memorisation: when canaries and trained sequences become extractable, against how often they were seen; and
the examples themselves, tokens coloured by match, linked to their documents."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Memorisation", "memorization")
kinds = set(ds["kind"].values.tolist())
left, right = st.columns(2)
if "canary" in kinds:
    state.runs_chart("memorization", wf.canary_map, "canaries", left)
if "sample" in kinds:
    state.runs_chart("memorization", wf.seen_map, "samples", right)

step = wf.nearest_step(ds, sel.step)
st.subheader(f"Examples at step {step}")
state.one_run_caption()
kind = state.choose("kind", sorted(kinds), "kind")
examples = state.memorization_examples(sel.run, step, kind)
st.dataframe(examples.drop(columns="html"), hide_index=True)
if len(examples):
    row = examples.set_index("sequence").loc[state.choose("sequence", examples["sequence"].tolist(), "sequence")]
    st.markdown(f"**prompt** {row['prompt']}")
    st.markdown(f"**target** `{row['target']}`")
    st.markdown("**greedy continuation** (green: the target's token, red: another)")
    st.html(row["html"] or row["continuation"])
    seen = sel.run.steps_seen(int(row["document"]))
    st.page_link("views/data.py", label=f"document {row['document']}: seen at {len(seen)} step(s)",
                 query_params={"run": sel.run.location, "doc": str(row["document"]), "step": str(step)})
