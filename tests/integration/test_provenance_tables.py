"""Provenance on a trained run: memorisation reads the corpus whole and the data order up to its step, so a
trainer appending later steps leaves the stored steps current, and a changed corpus makes every step stale."""

from __future__ import annotations

import json

import pytest

import workbench
from tests.conftest import wb
from workbench.analysis import ResultsMismatch, analyze


def test_memorization_follows_the_tables_it_reads(trained_run):
    run = workbench.open(trained_run)
    steps = run.steps
    assert analyze(trained_run, ["memorization"], workers=0, progress=False) == {"memorization": steps}
    ds = workbench.open(trained_run).results("memorization")
    inputs = json.loads(ds["provenance_inputs"].values[0])
    assert {"table:data/documents", "table:data/canaries", "table:data/order@step"} <= set(inputs)

    # A trainer appends step 35 with its batch: the order up to the stored steps is unchanged.
    last = run.checkpoint(steps[-1]).state_dict()
    order = run.table("data/order")
    batch = order[order["step"] == steps[-1]].assign(step=35)
    workbench.RunWriter(trained_run).write_checkpoint(35, last, tables={"data/order": {
        c: batch[c].to_numpy() for c in order.columns}})
    assert analyze(trained_run, ["memorization"], workers=0, progress=False) == {"memorization": [35]}

    # Another document in the corpus: every stored step read the old corpus. Some steps alone would mix the two.
    docs = run.table("data/documents")
    row = docs.iloc[:1].assign(document_id=int(docs["document_id"].max()) + 1, split="heldout")
    workbench.RunWriter(trained_run).append({"data/documents": {c: row[c].to_numpy() for c in docs.columns}}, "a document")
    code, out = wb("results", trained_run)
    assert code == 0 and f"stale: {len(steps) + 1} step(s) (0: table:data/documents changed" in out
    with pytest.raises(ResultsMismatch, match="was computed with another table:data/documents"):
        analyze(trained_run, ["memorization"], steps=[0], workers=0)
    assert analyze(trained_run, ["memorization"], workers=0, progress=False) == {"memorization": steps + [35]}
    code, out = wb("results", trained_run)
    assert "stale" not in out
