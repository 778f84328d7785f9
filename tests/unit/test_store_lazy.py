"""Checkpoints moved tensor by tensor: lazy tensors written with a bounded number in memory, giving the run and
the content id an in-memory write gives; safetensors files written one tensor at a time, read by safetensors."""

from __future__ import annotations

import weakref

import pytest
import torch
from safetensors.torch import load_file

import workbench
from workbench.store.hf import write_safetensors
from workbench.store import tensors
from workbench.store.tensors import LazyTensor


def test_lazy_tensors_are_read_within_the_write_budget_and_stored_as_the_eager_ones(new_run, hf_state_dicts,
                                                                                    monkeypatch):
    sd = hf_state_dicts((0,))[0]
    largest = max(t.numel() * t.element_size() for t in sd.values())
    monkeypatch.setattr(tensors, "WRITE_BUDGET", 2 * largest)  # a few tensors of the tiny model at once
    alive, most = {}, []

    def load(name):
        t = sd[name].clone()
        alive[id(t)] = t.numel() * t.element_size()
        weakref.finalize(t, alive.pop, id(t))
        most.append(sum(alive.values()))
        return t

    lazy = {k: LazyTensor(tuple(v.shape), v.dtype, lambda k=k: load(k)) for k, v in sd.items()}
    eager_path, eager = new_run()
    lazy_path, writer = new_run()
    eager.write_checkpoint(0, sd)
    writer.write_checkpoint(0, lazy)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    assert len(most) == len(sd) and max(most) <= 3 * largest < total  # the budget, and one tensor finishing
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


def test_safetensors_files_are_read_tensor_by_tensor_as_safetensors_reads_them(tmp_path):
    from safetensors.torch import save_file

    from workbench.store.hf import read_safetensors

    tensors = {"w": torch.randn(7, 3), "h": torch.randn(4, 4).to(torch.bfloat16), "i": torch.arange(5), "e": torch.ones(0)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})  # written by safetensors itself
    with open(tmp_path / "x.safetensors", "rb") as f:
        lazy = read_safetensors(f)
        assert {k: (v.shape, v.dtype) for k, v in lazy.items()} == {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
        assert all(torch.equal(lazy[k].load(), v) for k, v in tensors.items())
