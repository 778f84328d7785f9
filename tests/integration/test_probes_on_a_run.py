"""Probes on a trained run: the built-in tasks end to end, task files, one and two worker processes giving the
same numbers, resuming, and the runs they cannot probe."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr

import workbench
from tests.conftest import wb
from probes.tasks import build
from workbench.analysis import analyze
from workbench.errors import MissingData

PARAMS = {"probes": {"max_tokens": 1500}}


def test_built_in_tasks_split_by_document_and_score_above_the_baselines(trained_run):
    run = workbench.open(trained_run)
    sources = build(run, ["script", "language", "fact_en", "fact_ja"], {}, 1500, "last", 0, 32)
    for source in sources:
        for t in np.unique(source.example_text):  # every example of a document on one side
            assert len(set(source.split[source.example_text == t])) == 1
        docs_per_split = [set(source.groups[source.example_text[source.split == s]]) for s in range(3)]
        assert not (docs_per_split[0] & docs_per_split[1]) and not (docs_per_split[0] & docs_per_split[2])
    assert {s.name for s in sources} == {"tokens", "fact_en", "fact_ja"}
    analyze(run, ["probes"], steps=[0, 30], workers=0, progress=False, params=PARAMS)
    ds = workbench.open(trained_run).results("probes")
    assert list(ds["task"].values) == ["script", "language", "fact_en", "fact_ja"]
    assert ds.sizes["layer"] == 3  # the embeddings and two blocks
    last = ds.sel(step=30)
    # script is a function of the token: decodable from the embeddings, even at step 0
    assert float(ds["accuracy"].sel(step=0, task="script", layer=0)) > float(ds["majority"].sel(step=0, task="script"))
    assert float(last["accuracy"].sel(task="language").max()) > float(last["majority"].sel(task="language")) + 0.05
    np.testing.assert_allclose(ds["selectivity"], ds["accuracy"] - ds["control_accuracy"])
    assert np.isnan(last["transfer_accuracy"].sel(task="script")).all()
    assert np.isfinite(last["transfer_accuracy"].sel(task="fact_en")).all()
    code, out = wb("results", trained_run, "probes")
    assert code == 0 and "accuracy[script]" in out and "selectivity[fact_ja]" in out and len(out.splitlines()) == 2 + 2
    best = float(ds["accuracy"].sel(step=30, task="language").max())
    assert f"{best:.4g}" in out


def test_one_and_two_workers_give_the_same_numbers_and_a_rerun_computes_only_the_missing_steps(trained_run, tmp_path):
    other = shutil.copytree(trained_run, tmp_path / "other")
    assert analyze(trained_run, ["probes"], steps=[0, 10], workers=1, progress=False, params=PARAMS) == {"probes": [0, 10]}
    assert analyze(trained_run, ["probes"], steps=[0, 10, 30], workers=1, progress=False, params=PARAMS) == {"probes": [30]}
    assert analyze(other, ["probes"], steps=[0, 10, 30], workers=2, progress=False, params=PARAMS) == {
        "probes": [0, 10, 30]}
    xr.testing.assert_identical(workbench.open(trained_run).results("probes").load(),
                                workbench.open(other).results("probes").load())


def test_a_task_file_on_any_run_and_wb_probe(trained_run, tmp_path):
    """A token-level file task: the first word of each line is labelled by its length class."""
    lines = []
    for word in ["cat", "house", "sun", "window", "dog", "garden", "tea", "bridge"] * 12:
        text = f"{word} is here and the {word} stays"
        lines.append(json.dumps({"text": text, "spans": [[0, len(word), "short" if len(word) <= 3 else "long"]]}))
    path = tmp_path / "lengths.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out = wb("probe", trained_run, "--tasks", f"language,{path}", "--steps", "30", "--workers", "0")
    assert code == 0, out
    assert out.strip() == "probes: computed 1 step(s): 30"
    ds = workbench.open(trained_run).results("probes")
    assert list(ds["task"].values) == ["language", "lengths"]
    assert json.loads(ds["provenance_inputs"].values[0])["file:lengths"]
    code, out = wb("probe", trained_run, "--tasks", "scripts", "--workers", "0")
    assert code == 2 and "built-in tasks: script, language, fact" in out and len(out.strip().splitlines()) == 1


def test_a_run_without_a_corpus_needs_a_task_file(trained_run, tmp_path):
    run = workbench.open(trained_run)
    path = tmp_path / "imported"
    writer = workbench.create(path, model_config=run.model_config, tokenizer=run.tokenizer)
    writer.write_checkpoint(30, run.checkpoint(30).state_dict())
    with pytest.raises(MissingData, match="give a task file: --tasks path/to/task.jsonl"):
        analyze(path, ["probes"], workers=0, progress=False)
    code, out = wb("probe", path, "--workers", "0")
    assert code == 1 and "give a task file" in out and len(out.strip().splitlines()) == 1
    done = analyze(path, workers=0, progress=False, eval_data=_eval_file(run, tmp_path))  # skipped when not asked for
    assert "probes" not in done or done["probes"] == []


def _eval_file(run, tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("\n".join(run.documents()["text"].head(3).str.replace("\n", " ")) + "\n")
    return path
