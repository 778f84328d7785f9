"""Checkpoints moved tensor by tensor: lazy tensors written with a bounded number in memory, giving the run and
the content id an in-memory write gives; safetensors files written one tensor at a time, read by safetensors."""

from __future__ import annotations

import weakref

import pytest
import torch
from safetensors.torch import load_file

import workbench
from workbench.store.hf import write_safetensors
from workbench.store.tensors import LOADS_IN_FLIGHT, LazyTensor


def test_lazy_tensors_are_read_a_few_at_a_time_and_stored_as_the_eager_ones(new_run, hf_state_dicts):
    sd = hf_state_dicts((0,))[0]
    alive, most = set(), []

    def load(name):
        t = sd[name].clone()
        alive.add(id(t))
        weakref.finalize(t, alive.discard, id(t))
        most.append(len(alive))
        return t

    lazy = {k: LazyTensor(tuple(v.shape), v.dtype, lambda k=k: load(k)) for k, v in sd.items()}
    eager_path, eager = new_run()
    lazy_path, writer = new_run()
    eager.write_checkpoint(0, sd)
    writer.write_checkpoint(0, lazy)
    assert len(most) == len(sd) and max(most) <= LOADS_IN_FLIGHT + 1 < len(sd)
    got = workbench.open(lazy_path).checkpoint(0).state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert workbench.open(lazy_path).checkpoint_ids == workbench.open(eager_path).checkpoint_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_a_safetensors_file_written_tensor_by_tensor_reads_back_in_safetensors(tmp_path, dtype):
    tensors = {"b": torch.arange(12).reshape(3, 4).to(dtype), "a": torch.ones(5, dtype=dtype), "c": torch.zeros(0, 2, dtype=dtype)}
    write_safetensors(tmp_path / "x.safetensors", {k: LazyTensor(tuple(v.shape), v.dtype, lambda v=v: v)
                                                   for k, v in tensors.items()}, {"format": "pt"})
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) and back[k].dtype == dtype for k, v in tensors.items())
