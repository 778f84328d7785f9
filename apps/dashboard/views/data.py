"""Data: the documents that contain a text and every step that saw them; the documents of any step's batch."""

import streamlit as st

import workbench.figures as wf
from apps.dashboard import state
from workbench.errors import MissingData, WorkbenchError

sel = state.selection()
run = sel.run
st.title("Training data")
state.one_run_caption()
try:
    corpus = run.documents()
except MissingData as e:
    st.info(f"{e}. The data pages need the corpus and data order that `wb train` records.")
    st.stop()
query = st.text_input("documents containing", key="q", bind="query-params", placeholder="capital of")
hits = wf.document_hits(run, query) if query else None
if hits is not None:
    st.caption(f"{len(hits)} document(s) shown. \"times seen\": the training steps whose batch held part of the "
               "document (a document in several rows of one batch counts once); \"seen at\" lists them.")
    st.dataframe(hits, hide_index=True)

doc_param = st.query_params.get("doc")
known = set(corpus["document_id"])
if hits is not None and len(hits):  # a hit opens below, its id in the URL
    options = list(dict.fromkeys(hits["document"].tolist() + ([int(doc_param)] if doc_param and doc_param.isdigit()
                                                             and int(doc_param) in known else [])))
    snippets = dict(zip(hits["document"], hits["snippet"]))
    doc_param = str(state.choose("document", options, "doc", format_func=lambda d: f"{d}: {snippets.get(d, '')[:70]}"))
if doc_param is not None and doc_param.isdigit() and int(doc_param) in known:
    doc = int(doc_param)
    row = corpus.set_index("document_id").loc[doc]
    seen = run.steps_seen(doc)
    st.subheader(f"Document {doc} ({row['domain']}, {row['split']})")
    st.caption(f"seen at {len(seen)} step(s): {', '.join(map(str, seen)) or 'never'}")
    st.text(row["text"])
elif doc_param is not None:
    st.warning(f"document {doc_param!r} from the URL is not in this run's corpus")

st.subheader(f"The batch that trained step {sel.step}")
st.caption("choose the step in the sidebar")
try:
    st.dataframe(wf.batch_documents(run, sel.step), hide_index=True)
except WorkbenchError as e:  # step 0, the initial checkpoint, had no batch
    st.info(str(e))
