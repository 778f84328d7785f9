"""A checkpoint written by several processes into one commit (`fork_checkpoint` / `write_part` / `commit_forks`,
Icechunk's forked sessions): it reads back as the same checkpoint written by one writer — tensors, optimizer
state, content id — and forks that are never committed leave the run as it was."""

from __future__ import annotations

import pickle

import pytest
import torch

import workbench
from tests.unit.test_store_optimizer import adamw_state_after_steps


def _parts(state: dict, writers: int) -> list[dict]:
    """`state` as each writer holds it: every `writers`-th tensor real, the others meta (shape and dtype only)."""
    names = sorted(state)
    return [{n: t if names.index(n) % writers == w else t.to("meta") for n, t in state.items()}
            for w in range(writers)]


def _write_in_forks(writer, step: int, params: dict, moments: dict, writers: int = 2, commit: bool = True) -> None:
    session, forks = writer.fork_checkpoint(step, params, moments, writers)
    done, crcs = [], []
    for fork, held in zip(forks, _parts(params, writers)):
        fork = pickle.loads(pickle.dumps(fork))  # as it travels to another process
        slots = {n: {s: t.to("meta") if held[n].is_meta else t for s, t in moments[n].items()} for n in moments}
        crcs.append(type(writer).write_part(fork, step, held, slots))
        done.append(pickle.loads(pickle.dumps(fork)))  # and back
    if commit:
        writer.commit_forks(session, done, step, params, crcs)


@pytest.fixture(scope="module")
def trained(tiny_config) -> tuple[dict, dict]:
    """A model's parameters and its AdamW state after two steps."""
    import transformers

    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(tiny_config)
    moments = adamw_state_after_steps(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, moments


def test_a_checkpoint_from_forks_reads_as_one_writers(new_run, trained):
    params, moments = trained
    one_path, one = new_run()
    one.write_checkpoint(0, params)
    one.write_checkpoint(5, params, optimizer_state=moments)
    path, writer = new_run()
    writer.write_checkpoint(0, params)
    _write_in_forks(writer, 5, params, moments)
    run, ref = workbench.open(path), workbench.open(one_path)
    assert run.steps == [0, 5]
    assert run.checkpoint_ids[5] == ref.checkpoint_ids[5] != ""
    for name, t in run.checkpoint(5).state_dict().items():
        assert torch.equal(t, params[name]), name
    got = run.checkpoint(5).optimizer_state()
    for name, slots in moments.items():
        for slot, t in slots.items():
            assert torch.equal(got[name][slot], t), (name, slot)


def test_forks_never_committed_leave_the_run_as_it_was(new_run, trained):
    """A crash between the processes' writes and rank 0's commit: the arrays made for the step (empty on the step
    axis) are all that is committed; every reader sees the run as before."""
    from tests.conftest import wb

    params, moments = trained
    path, writer = new_run()
    writer.write_checkpoint(0, params)
    _write_in_forks(writer, 5, params, moments, commit=False)
    run = workbench.open(path)
    assert run.steps == [0] and run.checkpoint(0).optimizer_state() is None
    name = "model.layers.{layer}.self_attn.q_proj.weight"
    assert list(run.trajectory(name).step.values) == [0]
    assert wb("verify", path)[0] == 0
