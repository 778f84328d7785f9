"""The generic capture path on every architecture it has a layout for: the hooks add up as a residual stream
must (pre + attention + MLP = post, post of one block = pre of the next), the final norm and the patterns are
transformers' own, and the logits are those of a plain forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from workbench.models.capture import LAYOUTS, available_hooks, capture, generate, unembed

TOL = 1e-5
COMMON = dict(vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=None)


def tiny(model_type: str, **extra):
    if model_type == "gpt2":
        return transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                       eos_token_id=0, **extra)
    sizes = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, **COMMON)
    if model_type != "gpt_neox":
        sizes["num_key_value_heads"] = 2
    return transformers.AutoConfig.for_model(model_type, **sizes, **extra)


CASES = {
    "llama": tiny("llama", rope_theta=30000.0),
    "mistral": tiny("mistral", sliding_window=None),
    "qwen2": tiny("qwen2"),
    "olmo": tiny("olmo"),
    "olmo2": tiny("olmo2"),
    "gpt2": tiny("gpt2"),
    "gpt_neox_parallel": tiny("gpt_neox", use_parallel_residual=True, rotary_pct=0.25),
    "gpt_neox_sequential": tiny("gpt_neox", use_parallel_residual=False),
}


def build(config, attn="eager"):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def close(a, b, tol=TOL):
    return a.shape == b.shape and (a.float() - b.float()).abs().max().item() <= tol


def test_every_layout_is_tested():
    assert {c.removesuffix("_parallel").removesuffix("_sequential") for c in CASES} == set(LAYOUTS)


@pytest.mark.parametrize("case", list(CASES))
def test_hooks_add_up_on_every_layout(case):
    config = CASES[case]
    model = build(config)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    hooks = available_hooks(model)
    logits, acts = capture(model, ids, hooks)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    assert close(logits, out.logits)
    n = config.num_hidden_layers
    parallel = case == "gpt_neox_parallel"
    assert ("blocks.{l}.hook_resid_mid" in hooks) is not parallel
    embed = acts["hook_embed"] + acts.get("hook_pos_embed", 0)
    assert close(acts["blocks.0.hook_resid_pre"], embed)
    for l in range(n):
        a = {h: acts[f"blocks.{l}.{h}"] for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")}
        assert close(a["hook_resid_pre"], out.hidden_states[l])
        assert close(a["hook_resid_post"], a["hook_resid_pre"] + a["hook_attn_out"] + a["hook_mlp_out"])
        if not parallel:
            assert close(acts[f"blocks.{l}.hook_resid_mid"], a["hook_resid_pre"] + a["hook_attn_out"])
        if l + 1 < n:
            assert torch.equal(a["hook_resid_post"], acts[f"blocks.{l + 1}.hook_resid_pre"])
        pattern = acts[f"blocks.{l}.attn.hook_pattern"]  # [batch, head, query, key]
        assert close(pattern, out.attentions[l])
        assert close(pattern.sum(-1), torch.ones(2, pattern.shape[1], 11))
        assert pattern.triu(1).abs().max() == 0  # causal
        assert acts[f"blocks.{l}.mlp.hook_post"].shape[-1] in (48, 128)  # d_mlp (GPT-2: 4 * n_embd)
        act = model.get_submodule(f"{LAYOUTS[config.model_type].layers}.{l}.{LAYOUTS[config.model_type].mlp_act}")
        if config.model_type in ("gpt2", "gpt_neox"):  # not gated: the activation of hook_pre is hook_post
            assert close(act(acts[f"blocks.{l}.mlp.hook_pre"]), acts[f"blocks.{l}.mlp.hook_post"])
    # the logit lens of the last block's output is the model's own logits
    assert close(unembed(model, acts[f"blocks.{n - 1}.hook_resid_post"]), out.logits)
    streamed = {}
    capture(model, ids, hooks, fn=lambda name, x: streamed.__setitem__(name, x))
    assert set(streamed) == set(acts) and all(torch.equal(streamed[k], acts[k]) for k in acts)
    # the final norm applied to hook_normalized: its weight (and bias) give transformers' last hidden state
    final = model.get_submodule(LAYOUTS[config.model_type].final_norm)
    normed = acts["ln_final.hook_normalized"]
    if getattr(final, "weight", None) is not None:
        normed = normed * final.weight
    if getattr(final, "bias", None) is not None:
        normed = normed + final.bias
    assert close(normed, out.hidden_states[-1])


def test_patterns_on_an_sdpa_model_switch_to_eager_and_back():
    model = build(CASES["gpt2"], attn="sdpa")
    ids = torch.randint(0, 64, (1, 7))
    plain, acts = capture(model, ids, ["blocks.{l}.attn.hook_pattern", "blocks.1.hook_resid_post"])
    assert acts["blocks.1.attn.hook_pattern"].shape == (1, 4, 7, 7)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert close(plain, model(ids).logits, 1e-5)


def test_parallel_gpt_neox_has_no_resid_mid():
    from workbench.errors import UsageError

    with pytest.raises(UsageError, match="no hook 'blocks.0.hook_resid_mid'"):
        capture(build(CASES["gpt_neox_parallel"]), torch.zeros(1, 3, dtype=torch.long), ["blocks.0.hook_resid_mid"])


@pytest.mark.parametrize("case", ["llama", "gpt2", "gpt_neox_parallel", "olmo2"])
def test_fn_gets_each_activation_while_the_pass_runs_and_keeps_nothing(case):
    """With `fn`, every activation of block l reaches fn before block l + 1 starts, and the attention patterns
    handed over are freed before the pass ends: the pass never holds every layer's activations at once."""
    import weakref

    config = CASES[case]
    model = build(config)
    layout = LAYOUTS[config.model_type]
    events: list[tuple[str, object]] = []
    patterns: list[weakref.ref] = []
    alive_at_end: list[int] = []
    blocks = model.get_submodule(layout.layers)
    handles = [b.register_forward_pre_hook(lambda m, a, l=l: events.append(("start", l))) for l, b in enumerate(blocks)]
    handles.append(model.get_submodule(layout.final_norm).register_forward_pre_hook(
        lambda m, a: alive_at_end.append(sum(r() is not None for r in patterns))))

    def fn(name, x):
        events.append(("act", name))
        if name.endswith("hook_pattern"):
            patterns.append(weakref.ref(x))

    hooks = [h for h in available_hooks(model) if h != "ln_final.hook_normalized"]
    try:
        capture(model, torch.randint(0, 64, (2, 9)), hooks, fn=fn, logits=False)
    finally:
        for h in handles:
            h.remove()
    starts = {l: events.index(("start", l)) for l in range(len(blocks))}
    delivered = [(i, name) for i, (kind, name) in enumerate(events) if kind == "act"]
    assert len(delivered) == len(capture(model, torch.zeros(1, 2, dtype=torch.long), hooks)[1])
    for i, name in delivered:
        if name.startswith("blocks."):
            layer = int(name.split(".")[1])
            assert starts[layer] < i, name
            assert layer + 1 not in starts or i < starts[layer + 1], f"{name} arrived after block {layer + 1} started"
        else:
            assert i < starts[0], name  # embeddings
    assert len(patterns) == len(blocks) and alive_at_end == [0]


@pytest.mark.parametrize("case", ["gpt2", "gpt_neox_parallel"])
def test_generate_on_a_transformers_model_is_greedy_decoding(case):
    model = build(CASES[case])
    model.generation_config.eos_token_id = None  # never stop early: compare all 6 tokens
    ids = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                              pad_token_id=0)
    assert want.shape == (2, 10) and torch.equal(generate(model, ids, 6), want)


@pytest.mark.parametrize("case", ["llama", "gpt2", "gpt_neox_parallel"])
def test_continuation_logprobs_share_the_context_and_equal_a_plain_forward_pass(case):
    from workbench.models.capture import continuation_logprobs

    model = build(CASES[case])
    gen = torch.Generator().manual_seed(5)
    context = torch.randint(1, 64, (9,), generator=gen).tolist()
    choices = [torch.randint(1, 64, (n,), generator=gen).tolist() for n in (1, 4, 2)]
    got = continuation_logprobs(model, context, choices)
    for choice, lp in zip(choices, got):
        with torch.no_grad():
            logits = model(torch.tensor([context + choice])).logits[0].double().log_softmax(-1)
        want = [float(logits[len(context) - 1 + i, t]) for i, t in enumerate(choice)]
        np.testing.assert_allclose(lp, want, atol=1e-5)


def test_continuation_logprobs_of_the_in_repo_llama():
    from training.config import ModelConfig
    from training.model import Llama
    from workbench.models.capture import continuation_logprobs

    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)).eval()
    context, choices = [3, 7, 9, 11], [[5], [6, 8, 2]]
    got = continuation_logprobs(model, context, choices)
    for choice, lp in zip(choices, got):
        with torch.no_grad():
            logits = model(torch.tensor([context + choice]))[0].double().log_softmax(-1)
        np.testing.assert_allclose(lp, [float(logits[len(context) - 1 + i, t]) for i, t in enumerate(choice)], atol=1e-5)
