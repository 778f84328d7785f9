"""Hook points as TransformerLens has them, on the in-repo LLaMA and on the transformers path: any number of hooks
per point, run in order; a hook may return a replacement that flows on (patching, ablation, steering); nested
contexts compose; hooks go when their context ends, even on an error; and hooks that change nothing change no
bit of the logits. Patches are checked against TransformerLens' own bridge over the same weights."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

from training.config import ModelConfig
from training.model import HOOKS, Llama, load_checkpoint_state
from workbench.errors import UsageError

CFG = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=64, rope_theta=20000.0)
ALL = [h.format(l=l) for h in HOOKS for l in range(CFG.num_hidden_layers)]
TOL = 1e-5


def hf_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG.to_hf(), attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norm weights away from ones, so that ablating before or after the weight differs
                p.add_(0.1 * torch.randn_like(p))
    return model


def ours(hf=None) -> Llama:
    model = Llama(CFG).eval()
    load_checkpoint_state(model, (hf if hf is not None else hf_llama()).state_dict())
    return model


def bridge(hf):
    """TransformerLens' TransformerBridge over the transformers model (its weights unprocessed)."""
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    from workbench.models.views import bridge_config

    arch = type(hf).__name__
    tl = build_bridge_from_module(hf, arch, tl_config=bridge_config(hf, arch), tokenizer=None, model_name="test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return tl


def ids(batch: int = 2, pos: int = 13, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (batch, pos), generator=torch.Generator().manual_seed(seed))


def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------------- in-repo LLaMA

def test_a_returned_tensor_replaces_the_activation_and_an_observer_patches_nothing():
    """A hook's return value flows on: zeroing block 1's output is transformers' model with that block's output
    zeroed. The observer form `hooks(names, fn)` of captures ignores what fn returns."""
    hf = hf_llama()
    model, x = ours(hf), ids()
    handle = hf.model.layers[1].register_forward_hook(lambda m, args, out: torch.zeros_like(out))
    with torch.no_grad():
        want = hf(x).logits
        handle.remove()
        plain = model(x)
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda a, hook: torch.zeros_like(a))]):
            got = model(x)
        with model.hooks(["blocks.1.hook_resid_post"], lambda name, a: torch.zeros_like(a)):
            observed = model(x)
    assert differ(got, plain) and (got - want).abs().max().item() <= TOL
    assert torch.equal(observed, plain)


PATCHES = ["hook_embed", "blocks.1.hook_resid_pre", "blocks.1.ln2.hook_normalized", "blocks.0.attn.hook_pattern",
           "blocks.0.hook_attn_out", "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post", "blocks.2.hook_mlp_out",
           "blocks.1.hook_resid_post", "ln_final.hook_normalized"]


def steer(x: torch.Tensor, hook) -> torch.Tensor:
    """A patch that changes every entry: scaled, and shifted on the first position."""
    out = x * 0.5
    if out.ndim == 3:  # [batch, pos, d]
        out[:, 0] += 1.0
    return out


@pytest.mark.filterwarnings("ignore:A forward hook edited")  # the bridge rebuilding a norm's output
@pytest.mark.parametrize("name", PATCHES)
def test_a_patch_gives_transformer_lens_logits(name):
    """The same patch through `fwd_hooks` on the in-repo LLaMA, on the transformers model (where it has the hook
    and its modules allow the patch) and on TransformerLens' bridge: the same logits."""
    from workbench.models.capture import available_hooks, run_with_hooks

    hf = hf_llama()
    model, x = ours(hf), ids()
    on_hf = name not in HF_READ_ONLY and name.replace("blocks.1.", "blocks.{l}.") in available_hooks(hf)
    with torch.no_grad():
        plain = model(x)
        want = bridge(hf).run_with_hooks(x, fwd_hooks=[(name, steer)])
        got = model.run_with_hooks(x, fwd_hooks=[(name, steer)])
        generic = run_with_hooks(hf, x, [(name, steer)]) if on_hf else None
    assert differ(want, plain)
    assert (got - want).abs().max().item() <= TOL
    if generic is not None:
        assert (generic - want).abs().max().item() <= TOL


def test_a_patched_resid_mid_is_the_residual_the_mlp_reads_and_adds_to():
    """As HookedTransformer's (TransformerLens 4.3's bridge patches only the MLP's input, not the residual)."""
    model, x = ours(), ids()
    with torch.no_grad():
        got = model.run_with_hooks(x, fwd_hooks=[("blocks.2.hook_resid_mid", steer)])
        pre = {}
        with model.hooks(["blocks.2.hook_resid_pre"], pre.__setitem__):
            model(x)
        block, (cos, sin) = model.model.layers[2], model.model.rotary(x.shape[1], torch.float32)
        r = pre["blocks.2.hook_resid_pre"]
        mid = steer(r + block.self_attn(block.input_layernorm(r), cos, sin), None)
        want = model.lm_head(model.model.norm(mid + block.mlp(block.post_attention_layernorm(mid))))
    assert torch.equal(got, want)


def test_hooks_on_one_point_run_in_order_each_on_the_last_replacement():
    model, x = ours(), ids()
    seen = []

    def double(a, hook):
        seen.append(("double", hook.name, a.clone()))
        return a * 2

    def record(a, hook):
        seen.append(("record", hook.name, a.clone()))

    with torch.no_grad():
        plain = model(x)
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", double), ("blocks.0.hook_resid_post", record)]):
            model(x)
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", record), ("blocks.0.hook_resid_post", double)]):
            model(x)
        after = model(x)
    (k1, n1, a1), (k2, n2, a2), (k3, _, a3), (k4, _, a4) = seen
    assert (k1, k2, k3, k4) == ("double", "record", "record", "double") and n1 == n2 == "blocks.0.hook_resid_post"
    assert torch.equal(a2, a1 * 2) and torch.equal(a3, a1) and torch.equal(a4, a1)
    assert torch.equal(after, plain)


def test_nested_contexts_compose_and_each_removes_only_its_own():
    model, x = ours(), ids()
    outer, inner = [], []
    with torch.no_grad():
        with model.hooks(["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"], lambda n, a: outer.append(n)):
            with model.hooks(["blocks.1.hook_resid_post"], lambda n, a: inner.append(n)):
                model(x)
            model(x)  # the outer capture goes on after the inner context ends
    assert outer == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"] * 2
    assert inner == ["blocks.1.hook_resid_post"]
    assert not any(p.active for p in model.hook_points().values())


def test_hooks_are_removed_when_the_body_raises_or_a_name_is_unknown():
    model, x = ours(), ids()
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: None)]):
            raise RuntimeError("boom")
    with pytest.raises(UsageError, match="no hook 'blocks.0.hook_nonsense'"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: None),
                                    ("blocks.0.hook_nonsense", lambda a, hook: None)]):
            pass
    assert not any(p.active for p in model.hook_points().values())


MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad": torch.enable_grad}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("identity", ["returns None", "returns its input"])
def test_identity_hooks_on_every_point_leave_the_logits_bit_equal(identity, mode):
    """CPU float32: the attention pattern and the norms' x / rms(x) are computed beside the main path; the main
    path's ops (SDPA, the fused RMSNorm) are the same with and without hooks. Also through a KV cache."""
    from training.model import KVCache

    model, x = ours(), ids(pos=17)
    hooks = (model.hooks(ALL, lambda name, a: None) if identity == "returns None"
             else model.hooks(fwd_hooks=[(name, lambda a, hook: a) for name in ALL]))
    with MODES[mode]():
        plain = model(x)
        cache = KVCache()
        plain_continued = (model(x[:, :9], cache=cache), model(x[:, 9:], cache=cache))
        with hooks:
            hooked = model(x)
            cache = KVCache()
            hooked_continued = (model(x[:, :9], cache=cache), model(x[:, 9:], cache=cache))
    assert torch.equal(hooked, plain)
    assert all(torch.equal(a, b) for a, b in zip(hooked_continued, plain_continued))


def test_a_hooked_norm_keeps_the_fused_kernel(monkeypatch):
    """On CUDA the norm is a Triton kernel whose bits differ from the PyTorch formula: stand-in ops whose
    rms_norm is off by a factor show whether a hooked norm still takes the kernel's output."""
    import dataclasses

    import training.model as m
    from training.kernels import get_ops

    reference = get_ops(False)
    fused = lambda x, w, eps: reference.rms_norm(x, w, eps) * (1 + 2 ** -8)  # noqa: E731
    monkeypatch.setattr(m, "ops_for", lambda x: dataclasses.replace(reference, rms_norm=fused))
    model, x = ours(), ids()
    names = [n for n in ALL if n.endswith("hook_normalized")]
    with torch.no_grad():
        plain = model(x)
        with model.hooks(names, lambda n, a: None):
            assert torch.equal(model(x), plain)
        replaced = model.run_with_hooks(x, fwd_hooks=[(n, lambda a, hook: a * 1.0) for n in names])  # weight × it
    assert differ(replaced, plain)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])  # inference tensors have no version counter
def test_a_pattern_changed_in_place_is_a_replacement_and_zero_patterns_zero_the_attention(mode):
    model, x = ours(), ids()

    def zero_in_place(a, hook):
        a.zero_()

    with MODES[mode]():
        plain = model(x)
        in_place = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_pattern", zero_in_place)])
        returned = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda a, hook: a * 0)])
        no_attention = model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_attn_out", lambda a, hook: a * 0)])
    assert differ(in_place, plain)
    assert torch.equal(in_place, returned) and torch.equal(returned, no_attention)


def test_a_patched_pattern_through_the_kv_cache_equals_the_whole_sequence_patched():
    from training.model import KVCache

    model, x = ours(), ids(pos=15)

    def first_token_only(a, hook):  # [batch, head, query, key]: every query attends to position 0
        out = torch.zeros_like(a)
        out[..., 0] = 1.0
        return out

    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", first_token_only)]):
        whole = model(x)
        cache = KVCache()
        parts = torch.cat([model(x[:, :6], cache=cache), model(x[:, 6:], cache=cache)], 1)
    assert (parts - whole).abs().max().item() <= TOL


def test_gradients_flow_through_a_steering_hook():
    model, x = ours(), ids()
    vector = torch.zeros(CFG.hidden_size, requires_grad=True)
    logits = model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, hook: a + vector)])
    logits[:, -1, 0].sum().backward()
    assert vector.grad is not None and vector.grad.abs().max() > 0


def test_hooks_by_filter_and_what_a_hook_is_handed():
    model, x = ours(), ids()
    seen = {}

    def hook(a, hook):
        seen[hook.name] = (hook.layer(), a.shape)

    with torch.no_grad():
        model.run_with_hooks(x, fwd_hooks=[(lambda name: name.endswith("hook_mlp_out"), hook)])
    assert seen == {f"blocks.{l}.hook_mlp_out": (l, (2, 13, CFG.hidden_size)) for l in range(3)}


def test_a_hook_returning_something_else_is_refused():
    model, x = ours(), ids()
    with pytest.raises(UsageError, match="blocks.0.hook_resid_post.*returned int"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: 3)])
    with pytest.raises(UsageError, match=r"blocks.0.mlp.hook_post.*shape \[2, 13, 1\].*\[2, 13, 80\]"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a[..., :1])])
    assert not any(p.active for p in model.hook_points().values())


def test_permanent_hooks_until_reset():
    model, x = ours(), ids()
    with torch.no_grad():
        plain = model(x)
        model.add_hook("blocks.0.hook_resid_post", lambda a, hook: a * 0)
        ablated = model(x)
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda a, hook: None)]):
            pass  # a context ending leaves hooks it did not add
        assert torch.equal(model(x), ablated)
        model.reset_hooks()
        assert torch.equal(model(x), plain) and differ(ablated, plain)


# ---------------------------------------------------------------------------------------------- transformers path

HF_READ_ONLY = ("blocks.0.attn.hook_pattern", "blocks.2.hook_resid_mid")  # not module boundaries in transformers


def tiny_hf(model_type: str):
    sizes = dict(vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    if model_type == "gpt2":
        config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                         bos_token_id=0, eos_token_id=0)
    else:
        config = transformers.AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=48,
                                                   num_hidden_layers=2, num_attention_heads=4, **sizes)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox", "olmo2"])
def test_identity_hooks_on_the_transformers_path_leave_the_logits_bit_equal(model_type):
    from workbench.models.capture import available_hooks, run_with_hooks

    model = tiny_hf(model_type)
    x = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(input_ids=x, use_cache=False).logits  # as run_with_hooks calls it (a cache changes bits)
        for hook in (lambda a, hook: None), (lambda a, hook: a):
            assert torch.equal(run_with_hooks(model, x, [(n, hook) for n in available_hooks(model)]), plain)


@pytest.mark.parametrize("name", HF_READ_ONLY)
def test_the_transformers_path_refuses_a_patch_it_cannot_apply(name):
    from workbench.models.capture import run_with_hooks

    hf = hf_llama()
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())  # noqa: E731
    before = count()
    with pytest.raises(UsageError, match=f"{name}.*cannot be replaced on the transformers path"):
        run_with_hooks(hf, ids(), [(name, steer)])
    assert count() == before  # removed on the error too
    run_with_hooks(hf, ids(), [(name, lambda a, hook: None)])  # reading it is fine


def test_patches_on_both_paths_agree_and_contexts_nest_on_transformers():
    """`run_with_hooks` patches in-repo and on transformers alike; nested `hooks` compose on transformers too;
    `capture(..., fn=...)` only observes."""
    from workbench.models.capture import capture, hooks, run_with_hooks

    hf = hf_llama()
    model, x = ours(hf), ids()
    ablate = [("blocks.{l}.mlp.hook_post", lambda a, hook: a * 0 if hook.layer() == 1 else None)]
    with torch.no_grad():
        plain = model(x)
        a, b = run_with_hooks(model, x, ablate), run_with_hooks(hf, x, ablate)
    assert differ(a, plain) and (a - b).abs().max().item() <= TOL
    assert torch.equal(capture(model, x, ["blocks.1.mlp.hook_post"], fn=lambda name, t: t * 0)[0], plain)
    seen = []
    with torch.no_grad(), hooks(hf, [("blocks.{l}.hook_resid_post", lambda t, hook: seen.append(hook.name))]):
        with hooks(hf, [("blocks.1.hook_mlp_out", lambda t, hook: t * 0)]):
            inner = hf(x).logits
        outer = hf(x).logits
    assert seen == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"] * 2
    with torch.no_grad():
        assert differ(inner, outer) and torch.equal(outer, hf(x).logits)
