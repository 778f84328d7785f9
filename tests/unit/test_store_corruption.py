"""A flipped byte in a stored chunk is reported as CorruptData naming the array, never read as weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench
from tests.conftest import chunk_file
from workbench.errors import CorruptData

TARGET = "model.layers.1.self_attn.q_proj.weight"


def _chunk_files(run: Path) -> set[str]:
    return set(os.listdir(run / "chunks"))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.fixture
def run_with_two_steps(new_run, hf_state_dicts):
    """A run with steps 0 and 10, the reference state dicts, and the chunk files written for step 10."""
    sds = hf_state_dicts((0, 10))
    path, writer = new_run()
    writer.write_checkpoint(0, sds[0])
    before = _chunk_files(path)
    writer.write_checkpoint(10, sds[10])
    new = sorted(_chunk_files(path) - before)
    assert new, "writing a checkpoint wrote no chunk files under <run>/chunks"
    return path, sds, [path / "chunks" / f for f in new]


def test_flipped_byte_in_one_chunk_raises_corrupt_data(run_with_two_steps):
    path, sds, step10_files = run_with_two_steps
    chunk = chunk_file(step10_files, sds[10][TARGET])
    _flip_byte(chunk)

    run = workbench.open(path)  # opening reads no chunk data
    with pytest.raises(CorruptData) as info:
        run.checkpoint(10).state_dict()
    err = info.value
    assert "self_attn.q_proj.weight" in err.array
    assert err.step == 10
    assert "q_proj" in str(err) and "10" in str(err)

    # The other checkpoint is untouched and still bit-exact.
    got = run.checkpoint(0).state_dict()
    assert all(torch.equal(got[n], sds[0][n]) for n in sds[0])


def test_every_corrupted_chunk_of_a_step_is_detected(run_with_two_steps):
    """Whichever chunk is damaged, reading the step fails loudly instead of returning wrong weights."""
    path, sds, step10_files = run_with_two_steps
    for f in step10_files:
        _flip_byte(f)
    run = workbench.open(path)
    with pytest.raises(CorruptData):
        run.checkpoint(10).state_dict()
    got = run.checkpoint(0).state_dict()
    assert all(torch.equal(got[n], sds[0][n]) for n in sds[0])


def test_corrupt_chunk_in_a_trajectory_raises_corrupt_data(run_with_two_steps):
    """Trajectories read the same chunks; a damaged one must also surface as CorruptData naming the array."""
    path, sds, step10_files = run_with_two_steps
    _flip_byte(chunk_file(step10_files, sds[10][TARGET]))
    traj = workbench.open(path).trajectory("model.layers.{layer}.self_attn.q_proj.weight")
    # The undamaged step still computes.
    np.testing.assert_array_equal(traj.sel(step=0).values,
                                  torch.stack([sds[0][f"model.layers.{l}.self_attn.q_proj.weight"]
                                               for l in range(3)]).numpy())
    with pytest.raises(CorruptData, match="q_proj"):
        traj.values


def test_an_io_error_is_not_reported_as_corrupt_data(run_with_two_steps, monkeypatch):
    """A transient read failure (an S3 timeout) must not tell the user to distrust a sound run."""
    import icechunk

    from workbench.errors import ReadFailed

    path, sds, _ = run_with_two_steps
    run = workbench.open(path)

    get = icechunk.IcechunkStore.get

    async def unreachable(self, key, prototype, byte_range=None):
        if "q_proj.weight/c/1/" in key:  # the chunks of step 10 (index 1) of one array
            raise OSError("connection reset by peer")
        return await get(self, key, prototype, byte_range)

    monkeypatch.setattr(icechunk.IcechunkStore, "get", unreachable)
    with pytest.raises(ReadFailed, match=r"could not read params/.* at step 10: .*connection reset by peer.*try again"):
        run.checkpoint(10).state_dict()
    with pytest.raises(ReadFailed, match="connection reset by peer"):
        run.trajectory(TARGET).values
