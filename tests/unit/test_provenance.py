"""Provenance of stored results: each step records what it read, a step whose checkpoint or table changed is
recomputed with no flag, one analysis' failure never costs another its results, and coordinates that differ
are refused, never mixed (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import workbench
from tests.conftest import wb
from workbench.analysis import Analysis, AnalysisFailed, ResultsMismatch, analyze, register, unregister
from workbench.store.results import Update
from workbench.store.tables import fingerprints_upto

STEPS = (0, 10, 20, 30)
W = "model.layers.0.mlp.up_proj.weight"


class Rows(Analysis):
    """Reads a run table: the number of its rows (the table is `data/extra`)."""

    name = "test_rows"
    kind = "weights"
    reads_tables = ("data/extra",)

    def compute(self, ctx):
        table = ctx.run.table("data/extra")
        return xr.Dataset({"rows": ((), 0 if table is None else len(table), {"description": "rows of data/extra"})})


class Varying(Analysis):
    """Returns other variables from step 20 on: its appends after that cannot be committed."""

    name = "test_varying"
    kind = "weights"

    def compute(self, ctx):
        var = "a" if ctx.step < 20 else "b"
        return xr.Dataset({var: ((), 1.0, {"description": "a value"})})


class Labelled(Analysis):
    """Labels its one dimension with a non-index coordinate that changes from step to step."""

    name = "test_labelled"
    kind = "weights"

    def compute(self, ctx):
        return xr.Dataset({"x": ("item", [1.0, 2.0], {"description": "values"})},
                          coords={"item": [0, 1], "source": ("item", [ctx.step, ctx.step + 1])})


@pytest.fixture(autouse=True)
def test_analyses():
    for cls in (Rows, Varying, Labelled):
        register(cls)
    yield
    for cls in (Rows, Varying, Labelled):
        unregister(cls.name)


@pytest.fixture
def run_path(seeded_run):
    return seeded_run(STEPS)


def frobenius(run_path, step: int) -> float:
    return float(workbench.open(run_path).results("weights")["frobenius_norm"].sel(step=step, param=W))


def test_an_overwritten_checkpoint_is_recomputed_without_a_flag(run_path, hf_state_dicts):
    analyze(run_path, ["weights"], workers=0, progress=False)
    doubled = {k: 2 * v for k, v in hf_state_dicts(STEPS)[10].items()}
    workbench.RunWriter(run_path).write_checkpoint(10, doubled, overwrite=True)
    code, out = wb("results", run_path)
    assert code == 0 and "stale: 2 step(s) (10: checkpoint 10 was overwritten; 20: checkpoint 10 was overwritten)" in out

    done = analyze(run_path, ["weights"], workers=0, progress=False)
    assert done == {"weights": [10, 20]}  # step 10, and step 20 whose dist_to_prev reads it; 0 and 30 are current
    want = float(torch.linalg.matrix_norm(doubled[W].double()))
    assert frobenius(run_path, 10) == pytest.approx(want, rel=1e-6)
    ds = workbench.open(run_path).results("weights")
    prev = float(torch.linalg.matrix_norm((hf_state_dicts(STEPS)[20][W] - doubled[W]).double()))
    assert float(ds["dist_to_prev"].sel(step=20, param=W)) == pytest.approx(prev, rel=1e-5)
    assert ds["step"].values.tolist() == list(STEPS)
    assert analyze(run_path, ["weights"], workers=0, progress=False) == {"weights": []}
    code, out = wb("results", run_path)
    assert "stale" not in out


def test_each_step_records_what_it_read(run_path):
    analyze(run_path, ["weights"], workers=0, progress=False)
    run = workbench.open(run_path)
    ds = run.results("weights")
    import json

    ids = run.checkpoint_ids
    for step, read in zip(ds["step"].values.tolist(), ds["provenance_checkpoints"].values.tolist()):
        prev = max((s for s in STEPS if s < step), default=None)
        want = {str(s): ids[s] for s in {step, 0} | ({prev} if prev is not None else set())}
        assert json.loads(read) == want
    assert set(json.loads(ds["provenance_params"].values[0])) == {"min_tail"}
    assert "provenance_code" in ds.coords and len(set(ids.values())) == len(STEPS)
    for argv in ([], ["--step", "10"]):  # tables show the values, not the provenance
        code, out = wb("results", run_path, "weights", *argv)
        assert code == 0 and "frobenius_norm" in out and "provenance" not in out


def test_a_changed_run_table_makes_the_steps_that_read_it_stale(run_path):
    writer = workbench.RunWriter(run_path)
    writer.append({"data/extra": {"x": [1, 2]}}, "extra rows")
    assert analyze(run_path, ["test_rows"], workers=0, progress=False) == {"test_rows": list(STEPS)}
    assert analyze(run_path, ["test_rows"], workers=0, progress=False) == {"test_rows": []}
    writer.append({"data/extra": {"x": [3]}}, "one more row")
    assert analyze(run_path, ["test_rows"], workers=0, progress=False) == {"test_rows": list(STEPS)}
    assert workbench.open(run_path).results("test_rows")["rows"].values.tolist() == [3] * len(STEPS)


def test_rows_appended_for_later_steps_leave_earlier_fingerprints_alone():
    order = {"step": np.array([1, 1, 2, 3]), "document_id": np.array([5, 6, 5, 7]), "text": np.array(["a", "b", "c", "d"], dtype=object)}
    before = fingerprints_upto(order, [1, 2, 3])
    later = {k: np.concatenate([v, v[-1:]]) for k, v in order.items()}
    later["step"][-1] = 4
    after = fingerprints_upto(later, [1, 2, 3, 4])
    assert [after[s] for s in (1, 2, 3)] == [before[s] for s in (1, 2, 3)] and after[4] != after[3]
    shuffled = {k: v[[1, 0, 2, 3]] for k, v in order.items()}  # the order of rows within a step does not matter
    assert fingerprints_upto(shuffled, [1, 2, 3]) == before
    changed = {**order, "document_id": np.array([5, 6, 9, 7])}  # a row of step 2 changed
    again = fingerprints_upto(changed, [1, 2, 3])
    assert again[1] == before[1] and again[2] != before[2] and again[3] != before[3]


def test_one_analysis_failing_to_commit_costs_the_others_nothing(run_path):
    with pytest.raises(AnalysisFailed, match=r"test_varying at step\(s\) 20, 30: ResultsMismatch: .*; every other "
                                             r"result is stored"):
        analyze(run_path, ["test_varying", "weights"], workers=0, progress=False, commit_every=2)
    run = workbench.open(run_path)
    assert run.results("weights")["step"].values.tolist() == list(STEPS)
    assert run.results("test_varying")["step"].values.tolist() == [0, 10]
    code, out = wb("analyze", run_path, "--only", "test_varying", "--workers", "0")
    assert code == 1 and out.count("\n") == 1 and "test_varying at step(s) 20, 30" in out


def test_a_non_index_coordinate_that_differs_is_refused_not_mixed(run_path):
    with pytest.raises(AnalysisFailed, match="test_labelled at step"):
        analyze(run_path, ["test_labelled"], workers=0, progress=False, commit_every=2)
    stored = workbench.open(run_path).stored_results().get("test_labelled")
    assert stored is None or len(stored.steps) <= 1  # never two steps under one label of another step's


def test_appending_results_with_other_labels_is_refused(run_path):
    def update(step, source):
        ds = xr.Dataset({"x": ("item", [1.0, 2.0], {"description": "values"})},
                        coords={"item": [0, 1], "source": ("item", source)}).expand_dims(step=[step])
        return {"test_labelled": Update(ds, {"name": "test_labelled", "params": {}})}

    writer = workbench.RunWriter(run_path)
    writer.write_results(update(0, [5, 6]), "first")
    with pytest.raises(ResultsMismatch, match="coordinate 'source' of the new results differs from the stored one"):
        writer.write_results(update(10, [7, 8]), "second")
    assert workbench.open(run_path).results("test_labelled")["source"].values.tolist() == [5, 6]


def test_results_stored_before_provenance_are_recomputed_whole(run_path, caplog):
    ds = xr.Dataset({"rows": ("step", [0, 0, 0, 0], {"description": "rows of data/extra"})}, coords={"step": list(STEPS)})
    workbench.RunWriter(run_path).write_results({"test_rows": Update(ds, {"name": "test_rows", "params": {}})}, "old")
    with pytest.raises(ResultsMismatch, match="step 0, not among the steps asked for, was stored before provenance"):
        analyze(run_path, ["test_rows"], steps=[10], workers=0)
    assert analyze(run_path, ["test_rows"], workers=0, progress=False) == {"test_rows": list(STEPS)}
    assert "test_rows: recomputing 4 step(s) (0: stored before provenance was recorded" in caplog.text
    assert "provenance_checkpoints" in workbench.open(run_path).results("test_rows").coords
