"""Memorisation: when canaries and trained sequences become extractable, against how often they were seen; and
the examples themselves, tokens coloured by match, linked to their documents."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Memorisation", "memorization")
kinds = set(ds["kind"].values.tolist())
left, right = st.columns(2)
if "canary" in kinds:
    state.chart(wf.canary_map(ds), "canaries", left)
if "sample" in kinds:
    state.chart(wf.seen_map(ds), "samples", right)

step = sel.step if sel.step in ds["step"].values else int(ds["step"].values[-1])
st.subheader(f"Examples at step {step}")
kind = state.choose("kind", sorted(kinds), "kind")
examples = wf.memorization_examples(sel.run, ds, step, kind)
st.dataframe(examples.drop(columns="html"), hide_index=True)
if len(examples):
    row = examples.set_index("sequence").loc[state.choose("sequence", examples["sequence"].tolist(), "sequence")]
    st.markdown(f"**prompt** {row['prompt']}")
    st.markdown(f"**target** `{row['target']}`")
    st.markdown("**greedy continuation** (green: the target's token, red: another)")
    st.html(row["html"] or row["continuation"])
    seen = sel.run.steps_seen(int(row["document"]))
    st.page_link("views/data.py", label=f"document {row['document']}: seen at {len(seen)} step(s)",
                 query_params={"run": sel.run.location, "doc": str(row["document"])})
