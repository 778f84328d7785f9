"""Tokens: an evaluation document coloured by per-token loss at steps A and B, and by when each token was learnt."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state
from workbench.models.views import hf_tokenizer

sel, ds = state.page_of("Tokens", "loss")
state.one_run_caption()
if (hf := hf_tokenizer(sel.run)) is None:
    st.info(f"{sel.run.location} stores no tokenizer, so its tokens cannot be shown as text; its held-out loss is on "
            "Overview.")
    st.stop()
docs = wf.eval_documents(ds, hf.eos_token_id)
left, right = st.columns(2)
domain = state.choose("domain", sorted(docs["domain"].unique()), "domain", where=left)
in_domain = docs[docs["domain"] == domain].set_index("document")
number = state.choose("document", in_domain.index.tolist(), "doc_index", where=right)
doc = in_domain.loc[number]
steps = [int(s) for s in ds["step"].values]
a = sel.step if sel.step in steps else steps[-1]
b = sel.step_b if sel.step_b in steps else steps[0]
vmax = st.slider("loss shown as darkest (nats)", 1.0, 12.0, 6.0, 0.5, key="vmax", bind="query-params")
tok = sel.run.tokenizer
for label, step in (("A", a), ("B", b)):
    loss = float(ds["token_loss"].sel(step=step).isel(token=slice(doc["first"], doc["first"] + doc["length"])).mean())
    st.markdown(f"**step {label} = {step}**: mean loss {loss:.3f} nats over {doc['length']} tokens (hover a token)")
    st.html(wf.document_loss_html(tok, ds, doc["first"], doc["length"], step, vmax))
threshold = st.slider("learnt: loss stays below (nats)", 0.1, 5.0, 1.0, 0.1, key="threshold", bind="query-params")
st.markdown("**when each token was learnt** (darker: later; grey: not yet)")
st.html(wf.document_learned_html(tok, ds, doc["first"], doc["length"], threshold))
