"""Two writers of one run (a trainer and an analysis) commit disjoint groups without losing either."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

import workbench
from workbench.errors import ConcurrentWrite


def _write_result(session, values):
    root = zarr.open_group(session.store, mode="a")
    arr = root.require_array("results/demo/x", shape=(len(values),), dtype="float64")
    arr[:] = values


def test_results_commit_rebases_over_a_checkpoint(new_run, hf_state_dicts):
    sds = hf_state_dicts((0, 10))
    path, trainer = new_run()
    trainer.write_checkpoint(0, sds[0])
    analysis = workbench.RunWriter(path)
    with analysis.transaction("results") as session:
        _write_result(session, [1.0, 2.0])
        trainer.write_checkpoint(10, sds[10])  # lands while the analysis is still writing
    run = workbench.open(path)
    assert run.steps == [0, 10]
    assert all(torch.equal(run.checkpoint(10).state_dict()[k], v) for k, v in sds[10].items())
    np.testing.assert_array_equal(run.root["results/demo/x"][:], [1.0, 2.0])


def test_two_writers_of_the_same_array_conflict(new_run, hf_state_dicts):
    path, writer = new_run()
    other = workbench.RunWriter(path)
    with pytest.raises(ConcurrentWrite):
        with writer.transaction("first") as session:
            _write_result(session, [1.0])
            with other.transaction("second") as session2:
                _write_result(session2, [2.0])
    np.testing.assert_array_equal(workbench.open(path).root["results/demo/x"][:], [2.0])


def test_a_failed_transaction_commits_nothing(new_run):
    path, writer = new_run()
    with pytest.raises(RuntimeError):
        with writer.transaction("broken") as session:
            _write_result(session, [1.0])
            raise RuntimeError("analysis failed")
    assert "results" not in workbench.open(path).root
