"""Optimizer state round trip: a real AdamW's state, keyed by HF parameter names, comes back bit-exact."""

from __future__ import annotations

import pytest
import torch

import workbench


def adamw_state_after_steps(model, steps: int = 2, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """{HF name: {exp_avg, exp_avg_sq, step}} of an AdamW after `steps` updates on random tokens."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    names = {p: n for n, p in model.named_parameters()}
    return {names[p]: {k: v.detach().clone() for k, v in s.items()} for p, s in opt.state.items()}


@pytest.fixture(scope="module")
def trained(tiny_config):
    import transformers

    torch.manual_seed(7)
    model = transformers.LlamaForCausalLM(tiny_config)
    state = adamw_state_after_steps(model, steps=2)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return params, state


def test_adamw_state_is_what_this_test_expects(trained):
    params, state = trained
    assert sorted(state) == sorted(params)  # every parameter got a gradient
    for slots in state.values():
        assert set(slots) == {"exp_avg", "exp_avg_sq", "step"}
        assert float(slots["step"]) == 2.0


def test_optimizer_state_round_trips_bit_exact(new_run, trained):
    params, state = trained
    path, writer = new_run()
    writer.write_checkpoint(100, params, optimizer_state=state)
    got = workbench.open(path).checkpoint(100).optimizer_state()
    assert got is not None
    assert sorted(got) == sorted(state)
    for name, slots in state.items():
        assert sorted(got[name]) == sorted(slots), name
        for slot, want in slots.items():
            g = got[name][slot]
            assert g.dtype == want.dtype, f"{name}/{slot}: dtype {g.dtype} != {want.dtype}"
            assert g.shape == want.shape, f"{name}/{slot}: shape {tuple(g.shape)} != {tuple(want.shape)}"
            assert torch.equal(g, want), f"{name}/{slot}"


def test_scalar_step_keeps_its_shape_for_every_parameter(new_run, trained):
    """AdamW's `step` is a 0-d tensor for stacked (per-layer) and unstacked parameters alike."""
    params, state = trained
    path, writer = new_run()
    writer.write_checkpoint(0, params, optimizer_state=state)
    got = workbench.open(path).checkpoint(0).optimizer_state()
    shapes = {name: tuple(got[name]["step"].shape) for name in ("model.layers.0.self_attn.q_proj.weight",
                                                                 "model.embed_tokens.weight", "model.norm.weight",
                                                                 "lm_head.weight")}
    assert shapes == {name: () for name in shapes}


def test_optimizer_state_per_step(new_run, trained, tiny_config):
    """Two checkpoints with different optimizer states: each step reads back its own."""
    import transformers

    params, state = trained
    torch.manual_seed(8)
    model2 = transformers.LlamaForCausalLM(tiny_config)
    state2 = adamw_state_after_steps(model2, steps=3, seed=1)
    path, writer = new_run()
    writer.write_checkpoint(1, params, optimizer_state=state)
    writer.write_checkpoint(2, {k: v.detach().clone() for k, v in model2.state_dict().items()}, optimizer_state=state2)
    run = workbench.open(path)
    for step, want in ((1, state), (2, state2)):
        got = run.checkpoint(step).optimizer_state()
        for name in ("model.layers.2.mlp.gate_proj.weight", "model.embed_tokens.weight"):
            assert torch.equal(got[name]["exp_avg"], want[name]["exp_avg"])
            assert torch.equal(got[name]["exp_avg_sq"], want[name]["exp_avg_sq"])


def test_checkpoint_without_optimizer_state_returns_none(new_run, trained):
    params, state = trained
    path, writer = new_run()
    writer.write_checkpoint(0, params)
    assert workbench.open(path).checkpoint(0).optimizer_state() is None
    # Also when other steps of the same run do carry optimizer state.
    writer.write_checkpoint(10, params, optimizer_state=state)
    run = workbench.open(path)
    assert run.checkpoint(0).optimizer_state() is None
    assert run.checkpoint(10).optimizer_state() is not None
