"""A Run is a snapshot: it sees checkpoints committed after it was opened only after `refresh()`."""

from __future__ import annotations

import pytest
import torch

import workbench
from workbench.errors import StepNotFound


def test_refresh_shows_new_checkpoints(new_run, hf_state_dicts):
    sds = hf_state_dicts((0, 10, 20))
    path, writer = new_run()
    writer.write_checkpoint(0, sds[0])
    run = workbench.open(path)
    before = run.trajectory("model.layers.{layer}.self_attn.o_proj.weight")

    writer.write_checkpoint(10, sds[10])
    writer.write_checkpoint(20, sds[20])

    assert run.steps == [0]
    with pytest.raises(StepNotFound):
        run.checkpoint(10)
    assert run.trajectory("model.layers.{layer}.self_attn.o_proj.weight").sizes["step"] == 1
    # The old snapshot still reads its own data.
    got = run.checkpoint(0).state_dict()
    assert all(torch.equal(got[n], sds[0][n]) for n in sds[0])

    assert run.refresh() is run
    assert run.steps == [0, 10, 20]
    for step in (0, 10, 20):
        got = run.checkpoint(step).state_dict()
        assert sorted(got) == sorted(sds[step])
        assert all(torch.equal(got[n], sds[step][n]) for n in sds[step]), step
    after = run.trajectory("model.layers.{layer}.self_attn.o_proj.weight")
    assert after["step"].values.tolist() == [0, 10, 20]
    assert before.sizes["step"] == 1  # a trajectory taken earlier keeps its snapshot's steps
    want = torch.stack([sds[20][f"model.layers.{l}.self_attn.o_proj.weight"] for l in range(3)])
    assert torch.equal(torch.from_numpy(after.sel(step=20).values), want)


def test_refresh_of_a_run_opened_before_its_first_checkpoint(new_run, hf_state_dicts):
    sds = hf_state_dicts((0,))
    path, writer = new_run()
    run = workbench.open(path)
    assert run.steps == []
    writer.write_checkpoint(0, sds[0])
    assert run.steps == []
    run.refresh()
    assert run.steps == [0]
    got = run.checkpoint(0).state_dict()
    assert all(torch.equal(got[n], sds[0][n]) for n in sds[0])
