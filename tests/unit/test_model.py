"""The in-repo LLaMA against transformers' LlamaForCausalLM with the same weights (float32, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from training.config import ModelConfig
from training.model import Llama, checkpoint_state, load_checkpoint_state


def pair(**overrides):
    cfg = ModelConfig(**{**dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64),
                         **overrides})
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf())).eval()
    ours = Llama(cfg).eval()
    load_checkpoint_state(ours, hf.state_dict())
    return cfg, hf, ours


@pytest.mark.parametrize("overrides", [
    {},  # grouped-query attention (6 heads over 2 kv heads)
    {"num_key_value_heads": 6, "rope_theta": 500000.0},  # multi-head, non-default rope_theta
    {"tie_word_embeddings": True, "num_key_value_heads": 3, "rope_theta": 1234.5},
])
def test_logits_match_transformers(overrides):
    cfg, hf, ours = pair(**overrides)
    ids = torch.randint(0, cfg.vocab_size, (3, 29))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5


def test_hf_state_dict_loads_unchanged_and_names_match():
    cfg, hf, ours = pair()
    assert set(checkpoint_state(ours)) == set(hf.state_dict())
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in hf.state_dict().items())


def test_loss_equals_cross_entropy_of_hf_logits():
    cfg, hf, ours = pair(rope_theta=50000.0)
    ids = torch.randint(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        logits = hf(ids).logits
        want = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        got = ours(ids[:, :-1], ids[:, 1:])
    assert abs(got.item() - want.item()) <= 1e-5


def test_tied_checkpoint_state_drops_lm_head():
    cfg, hf, ours = pair(tie_word_embeddings=True)
    state = checkpoint_state(ours)
    assert "lm_head.weight" not in state
    fresh = Llama(cfg)
    load_checkpoint_state(fresh, state)
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()
    assert torch.equal(fresh.lm_head.weight, hf.lm_head.weight)


def test_from_state_dict_gives_the_same_model():
    cfg, hf, ours = pair(tie_word_embeddings=True, num_key_value_heads=3)
    loaded = Llama.from_state_dict(cfg.to_hf(), checkpoint_state(ours))
    ids = torch.randint(0, cfg.vocab_size, (2, 13))
    with torch.no_grad():
        assert torch.equal(loaded(ids), ours(ids))
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_from_state_dict_names_a_missing_or_misshapen_tensor():
    from workbench.errors import IncompatibleCheckpoint

    cfg, hf, ours = pair()
    state = checkpoint_state(ours)
    with pytest.raises(IncompatibleCheckpoint, match="lacks model.layers.1.mlp.up_proj.weight"):
        Llama.from_state_dict(cfg, {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"})
    bad = {**state, "model.norm.weight": torch.ones(7)}
    with pytest.raises(IncompatibleCheckpoint, match="model.norm.weight"):
        Llama.from_state_dict(cfg, bad)


def test_greedy_generate_matches_transformers():
    cfg, hf, ours = pair()
    ids = torch.randint(0, cfg.vocab_size, (3, 5))
    with torch.no_grad():
        want = hf.generate(ids, max_new_tokens=9, min_new_tokens=9, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, 9), want)


def test_a_prefix_in_the_kv_cache_continues_as_the_whole_sequence_would():
    from training.model import KVCache

    cfg, hf, ours = pair()
    ids = torch.randint(0, cfg.vocab_size, (1, 17))
    choices = torch.randint(0, cfg.vocab_size, (3, 6))
    with torch.no_grad():
        cache = KVCache()
        prefix = ours(ids, cache=cache)
        continued = ours(choices, cache=cache.expand(3))  # three continuations of one prefix at once
        whole = ours(torch.cat([ids.expand(3, -1), choices], 1))
    assert (prefix[0] - whole[0, :17]).abs().max() <= 1e-5
    assert (continued - whole[:, 17:]).abs().max() <= 1e-5
    assert cache.length == 17
