"""Views of a checkpoint (in-repo LLaMA, transformers, TransformerLens, nnsight) agree, and capture gives the
same activations as each library's own; bad input fails with a workbench error that says what to do.

The runs are imported from folders that transformers itself wrote for tiny random models (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any hub call fails loudly instead of hanging

import workbench
from workbench.errors import IncompatibleCheckpoint, MissingData, UsageError
from workbench.models.capture import available_hooks, capture
from workbench.store.hf import import_hf

TOL = 1e-4  # float32, the bound for logits across views
ACT_TOL = 1e-5  # activations of two implementations of the same forward pass
LLAMA = dict(vocab_size=128, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rope_theta=20000.0, rms_norm_eps=1e-6)


def word_tokenizer(vocab_size: int):
    """A whitespace word-level `tokenizers.Tokenizer`: `<|endoftext|>` = 0, `<|pad|>` = 1, then w2, w3, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    return tok


def random_model(model, seed: int):
    """Perturb every 1-D parameter too (norms start at ones), so a wrong tensor anywhere shows in the logits."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p)) if p.ndim == 1 else None
    return model.eval()


def make_run(root: Path, model_cls, config, steps=(0, 1000), tokenizer: bool = True) -> Path:
    """`root/src/step{N}` folders saved by transformers, imported into `root/run`."""
    src = root / "src"
    for step in steps:
        torch.manual_seed(step)
        random_model(model_cls(config), step).save_pretrained(src / f"step{step}")
    if tokenizer:
        word_tokenizer(config.vocab_size).save(str(src / "tokenizer.json"))
    import_hf([src], root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def llama_run(request, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    return workbench.open(make_run(root, LlamaForCausalLM, LlamaConfig(**LLAMA, tie_word_embeddings=request.param)))


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, LLAMA["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(0))


def maxdiff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_four_views_give_the_same_logits(llama_run, ids):
    ckpt = llama_run.checkpoint(1000)
    ours, hf, tl, nns = ckpt.model(), ckpt.to_hf(), ckpt.to_hooked_transformer(), ckpt.to_nnsight()
    assert not ours.training and not hf.training and not tl.training
    assert type(hf).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        reference = ours(ids)
        with nns.trace(ids):
            nn_logits = nns.output.logits.save()
        for logits in (hf(ids).logits, tl(ids), nn_logits):
            assert maxdiff(logits, reference) <= TOL
    # another step is another model
    with torch.no_grad():
        assert maxdiff(llama_run.checkpoint(0).to_hf()(ids).logits, reference) > 1e-3


def test_views_read_the_run_not_the_library_defaults(llama_run):
    ckpt = llama_run.checkpoint(0)
    cfg = ckpt.to_hooked_transformer().cfg
    assert cfg.rotary_base == LLAMA["rope_theta"]  # TransformerLens alone reads 10000 from a transformers-5 config
    assert (cfg.d_head, cfg.n_key_value_heads, cfg.eps, cfg.rotary_dim) == (16, 2, 1e-6, 16)
    assert cfg.positional_embedding_type == "rotary"
    assert cfg.tie_word_embeddings == llama_run.model_config["tie_word_embeddings"]
    ours = ckpt.model()
    assert ours.config.rope_theta == LLAMA["rope_theta"] and ours.config.head_dim == 16
    if ours.config.tie_word_embeddings:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
    stored = ckpt.state_dict()
    for name, t in ckpt.to_hf().state_dict().items():
        if name in stored:
            assert torch.equal(t, stored[name]), name
    assert ckpt.model(dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16


def test_transformer_lens_cache_equals_workbench_capture(llama_run, ids):
    ckpt = llama_run.checkpoint(1000)
    names = ["blocks.{l}.hook_resid_pre", "blocks.{l}.hook_resid_post", "blocks.{l}.attn.hook_pattern",
             "blocks.{l}.hook_attn_out", "blocks.{l}.mlp.hook_pre", "blocks.{l}.mlp.hook_post",
             "ln_final.hook_normalized", "hook_embed"]
    logits, ours = capture(ckpt, ids, names)  # the in-repo model
    hf_logits, generic = capture(ckpt.to_hf(), ids, names)  # the transformers path
    with torch.no_grad():
        tl_logits, cache = ckpt.to_hooked_transformer().run_with_cache(ids)
    assert set(ours) == set(generic) and len(ours) == 6 * LLAMA["num_hidden_layers"] + 2
    assert maxdiff(logits, hf_logits) <= TOL and maxdiff(logits, tl_logits) <= TOL
    for name in ours:
        assert maxdiff(ours[name], cache[name]) <= ACT_TOL, name
        assert maxdiff(generic[name], cache[name]) <= ACT_TOL, name


def test_nnsight_layer_output_equals_capture_and_transformer_lens(llama_run, ids):
    ckpt = llama_run.checkpoint(1000)
    nns = ckpt.to_nnsight()
    with nns.trace(ids):
        attn0 = nns.model.layers[0].self_attn.output[0].save()  # in execution order, as nnsight requires
        layer1 = nns.model.layers[1].output.save()
    layer1 = layer1[0] if isinstance(layer1, tuple) else layer1
    _, acts = capture(ckpt, ids, ["blocks.1.hook_resid_post", "blocks.0.hook_attn_out"])
    with torch.no_grad():
        _, cache = ckpt.to_hooked_transformer().run_with_cache(ids, names_filter=lambda n: n == "blocks.1.hook_resid_post")
    assert maxdiff(layer1, acts["blocks.1.hook_resid_post"]) <= ACT_TOL
    assert maxdiff(layer1, cache["blocks.1.hook_resid_post"]) <= ACT_TOL
    assert maxdiff(attn0, acts["blocks.0.hook_attn_out"]) <= ACT_TOL
    # text in, through the run's tokenizer
    with nns.trace("w5 w6 w7 <|endoftext|> w9"):
        logits = nns.output.logits.save()
    assert logits.shape == (1, 5, LLAMA["vocab_size"])


def test_transformer_lens_weight_processing_changes_logits_by_a_constant_per_position(llama_run, ids):
    ckpt = llama_run.checkpoint(1000)
    processed = ckpt.to_hooked_transformer(process_weights=True)
    with torch.no_grad():
        reference, raw = ckpt.to_hf()(ids).logits, processed(ids)
    centre = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    assert maxdiff(centre(raw), centre(reference)) <= TOL  # center_unembed removes the per-position mean only
    assert maxdiff(raw, reference) > TOL  # ...which is not zero: processing is on
    assert maxdiff(raw.log_softmax(-1), reference.log_softmax(-1)) <= TOL


def test_capture_names_and_templates(llama_run, ids):
    ckpt = llama_run.checkpoint(0)
    model = ckpt.model()
    _, one = capture(model, ids[0], "blocks.2.hook_resid_post")  # 1-D ids are one sequence
    assert list(one) == ["blocks.2.hook_resid_post"] and one["blocks.2.hook_resid_post"].shape == (1, 17, 48)
    assert "blocks.{l}.attn.hook_pattern" in available_hooks(ckpt)
    with pytest.raises(UsageError, match="no hook 'blocks.0.hook_nonsense'.*available: hook_embed"):
        capture(model, ids, ["blocks.0.hook_nonsense"])
    with pytest.raises(UsageError, match="layer 7 out of range"):
        capture(ckpt.to_hf(), ids, ["blocks.7.hook_resid_pre"])
    with pytest.raises(UsageError, match="capture takes a Checkpoint"):
        capture("runs/tiny", ids, [])


# ---------------------------------------------------------------------------------------------- bad input

def test_run_without_tokenizer_has_no_nnsight_view(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    run = workbench.open(make_run(tmp_path, LlamaForCausalLM, LlamaConfig(**LLAMA), steps=(0,), tokenizer=False))
    with pytest.raises(MissingData, match=r"has no tokenizer.*`wb import hf SRC --out RUN --tokenizer DIR`"):
        run.checkpoint(0).to_nnsight()
    assert run.checkpoint(0).to_hooked_transformer().tokenizer is None  # TransformerLens works without one


def test_architecture_without_a_view_names_the_supported_ones(tmp_path):
    from transformers import BioGptConfig, BioGptForCausalLM

    config = BioGptConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=32)
    ckpt = workbench.open(make_run(tmp_path, BioGptForCausalLM, config, steps=(0,))).checkpoint(0)
    assert type(ckpt.to_hf()).__name__ == "BioGptForCausalLM"  # transformers has it...
    with pytest.raises(IncompatibleCheckpoint, match=r"not the in-repo LLaMA's \(supported: llama\)"):
        ckpt.model()
    with pytest.raises(IncompatibleCheckpoint, match=r"TransformerLens has no adapter for BioGptForCausalLM.*"
                                                     r"GPTNeoXForCausalLM.*LlamaForCausalLM"):
        ckpt.to_hooked_transformer()
    with pytest.raises(IncompatibleCheckpoint, match=r"no activation capture for model_type 'biogpt'; "
                                                     r"supported: gpt2, gpt_neox, llama"):
        capture(ckpt, torch.zeros(1, 4, dtype=torch.long), ["blocks.0.hook_resid_pre"])


def test_in_repo_llama_refuses_what_it_does_not_implement(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**LLAMA, attention_bias=True)
    ckpt = workbench.open(make_run(tmp_path, LlamaForCausalLM, config, steps=(0,), tokenizer=False)).checkpoint(0)
    with pytest.raises(IncompatibleCheckpoint, match="no biases.*use to_hf"):
        ckpt.model()
    ids = torch.randint(0, 128, (1, 9))
    logits, acts = capture(ckpt, ids, ["blocks.0.hook_resid_post"])  # falls back to the transformers path
    with torch.no_grad():
        assert maxdiff(logits, ckpt.to_hf()(ids).logits) == 0


def _edit_config(location: Path, **changes) -> None:
    """Rewrite the stored model config (as a hand-edited or mis-imported run would have it)."""
    import zarr

    from workbench.store.storage import open_repository

    repo = open_repository(location)
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="r+")
    root.attrs["model_config"] = {**root.attrs["model_config"], **changes}
    session.commit("edit config")


@pytest.mark.parametrize("view", ["model", "to_hf", "to_hooked_transformer", "to_nnsight"])
def test_config_that_disagrees_with_the_tensors(tmp_path_factory, view):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp(view)
    location = make_run(root, LlamaForCausalLM, LlamaConfig(**LLAMA), steps=(0,))
    _edit_config(location, intermediate_size=96)
    with pytest.raises(IncompatibleCheckpoint, match=r"step 0 of .*: model\.layers\.0\.mlp\.\w+\.weight is "
                                                     r"\[\d+, \d+\] but the model config implies .*96"):
        getattr(workbench.open(location).checkpoint(0), view)()
    _edit_config(location, intermediate_size=80, model_type=None)
    with pytest.raises(IncompatibleCheckpoint, match="no model_type"):
        getattr(workbench.open(location).checkpoint(0), view)()
    _edit_config(location, model_type="llama_from_the_future")
    expected = r"supported: llama" if view == "model" else r"does not know model_type.*causal LMs are .*gpt_neox"
    with pytest.raises(IncompatibleCheckpoint, match=expected):
        getattr(workbench.open(location).checkpoint(0), view)()


def test_capture_rejects_bad_ids(llama_run):
    with pytest.raises(UsageError, match=r"input_ids must be \[batch, pos\]"):
        capture(llama_run.checkpoint(0).model(), torch.zeros(1, 2, 3, dtype=torch.long), [])
