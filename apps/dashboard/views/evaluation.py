"""Evaluation: task scores over training with standard-error bands and the chance level, and per planted fact
its recall against how often it had been seen — in the language it was taught in and in the other one."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state

sel, ds = state.page_of("Evaluation", "evaluation")
scores = [v for v in ("accuracy", "accuracy_bytes", "accuracy_chars", "gold_logprob", "bits_per_byte", "exact_match",
                      "char_f1") if v in ds]
left, middle, right = st.columns([2, 2, 1])
var = state.choose("score", scores, "score", where=left)
window = middle.slider("mean over neighbouring checkpoints", 1, 9, 1, 2, key="window", bind="query-params")
split = right.toggle("a panel per task", key="split", bind="query-params")
state.runs_chart("evaluation", lambda d: wf.score_curves(d, var, window=window, split=split), "curves")
few = {str(t): n for t in ds["task"].values if 0 < (n := wf.item_count(ds, var, t)) < 20}
if few:
    st.caption("Few items: " + "; ".join(f"{t} has {n}, so one item moves {var} by {1 / n:.2g}" for t, n in few.items())
               + ". Read their curves as steps of that size, not as trends.")
if ds.sizes.get("fact", 0):
    st.subheader("Facts: recall against exposure")
    with_facts = [str(t) for t in ds["task"].values if ds["fact_gold_logprob"].sel(task=t).notnull().any()]
    task = state.choose("task", with_facts, "task")
    st.caption("facts-en2ja asks the facts taught only in English, in Japanese (and ja2en the reverse): their "
               "exposures are in the language they were taught in.")
    left, right = st.columns(2)
    state.runs_chart("evaluation", lambda d: wf.exposure_recall(d, task), "exposure", left)
    state.runs_chart("evaluation", lambda d: wf.fact_recall_map(d, task, "fact_correct"), "recall", right)
