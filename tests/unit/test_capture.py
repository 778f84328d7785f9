"""Activation capture under TransformerLens hook names, against transformers' own hidden states,
attention weights and module inputs on the same weights."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.config import ModelConfig
from training.model import HOOKS, Llama, load_checkpoint_state

CFG = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=64, rope_theta=20000.0)
ALL = [h.format(l=l) for h in HOOKS for l in range(CFG.num_hidden_layers)]


def models():
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**CFG.to_hf(), attn_implementation="eager")).eval()
    ours = Llama(CFG).eval()
    load_checkpoint_state(ours, hf.state_dict())
    return hf, ours


def close(a, b, tol=1e-5):
    return a.shape == b.shape and (a - b).abs().max().item() <= tol


def test_capture_matches_transformers():
    hf, ours = models()
    ids = torch.randint(0, CFG.vocab_size, (2, 19))
    mlp_inputs, act_inputs = {}, {}
    handles = [layer.mlp.down_proj.register_forward_hook(lambda m, inp, out, i=i: mlp_inputs.__setitem__(i, inp[0]))
               for i, layer in enumerate(hf.model.layers)]
    handles += [layer.mlp.act_fn.register_forward_hook(lambda m, inp, out, i=i: act_inputs.__setitem__(i, inp[0]))
                for i, layer in enumerate(hf.model.layers)]
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True, output_attentions=True)
        cache = {}
        with ours.hooks(ALL, cache.__setitem__):
            logits = ours(ids)
    for h in handles:
        h.remove()
    assert close(logits, out.logits)
    assert close(cache["hook_embed"], out.hidden_states[0])
    for l in range(CFG.num_hidden_layers):
        assert close(cache[f"blocks.{l}.hook_resid_pre"], out.hidden_states[l])
        assert close(cache[f"blocks.{l}.attn.hook_pattern"], out.attentions[l])
        assert close(cache[f"blocks.{l}.mlp.hook_post"], mlp_inputs[l])
        assert close(cache[f"blocks.{l}.mlp.hook_pre"], act_inputs[l])
        assert close(cache[f"blocks.{l}.hook_resid_mid"],
                     cache[f"blocks.{l}.hook_resid_pre"] + cache[f"blocks.{l}.hook_attn_out"])
        assert close(cache[f"blocks.{l}.hook_resid_post"],
                     cache[f"blocks.{l}.hook_resid_mid"] + cache[f"blocks.{l}.hook_mlp_out"])
    for l in range(1, CFG.num_hidden_layers):
        assert torch.equal(cache[f"blocks.{l}.hook_resid_pre"], cache[f"blocks.{l - 1}.hook_resid_post"])
        layer = hf.model.layers[l]
        assert close(cache[f"blocks.{l}.ln1.hook_normalized"] * layer.input_layernorm.weight,
                     layer.input_layernorm(cache[f"blocks.{l}.hook_resid_pre"]))
        assert close(cache[f"blocks.{l}.ln2.hook_normalized"] * layer.post_attention_layernorm.weight,
                     layer.post_attention_layernorm(cache[f"blocks.{l}.hook_resid_mid"]))
    final = cache["ln_final.hook_normalized"] * hf.model.norm.weight
    assert close(final, out.hidden_states[-1])  # HF's last hidden state is after the final norm


def test_hooks_do_not_change_the_output_and_are_removed_after_the_block():
    _, ours = models()
    ids = torch.randint(0, CFG.vocab_size, (1, 11))
    seen = {}
    with torch.no_grad():
        plain = ours(ids)
        with ours.hooks(["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"], lambda n, x: seen.setdefault(n, x.shape)):
            hooked = ours(ids)
        after = ours(ids)
    assert torch.allclose(plain, hooked, atol=1e-6) and torch.equal(plain, after)
    assert seen == {"blocks.1.hook_resid_post": (1, 11, CFG.hidden_size), "blocks.0.attn.hook_pattern": (1, 6, 11, 11)}
    assert not any(p.active for p in ours.hook_points().values())


def test_hook_names_come_from_the_module_tree():
    """Every hook point's name is its module path in TransformerLens' words, and HOOKS lists exactly those."""
    _, ours = models()
    names = set(ours.hook_points())
    assert names == {h.format(l=l) for h in HOOKS for l in range(CFG.num_hidden_layers)}
    paths = {p: m.name for p, m in ours.named_modules() if m in ours.hook_points().values()}
    assert paths["model.layers.2.self_attn.hook_pattern"] == "blocks.2.attn.hook_pattern"
    assert paths["model.layers.0.post_attention_layernorm.hook_normalized"] == "blocks.0.ln2.hook_normalized"
    assert paths["model.norm.hook_normalized"] == "ln_final.hook_normalized"
    assert paths["model.hook_embed"] == "hook_embed"
