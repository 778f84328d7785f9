"""Public-style trajectories of other architectures (GPT-NeoX as Pythia, GPT-2 as LLM-jp v1) and a run of our
own trainer, end to end: written per step by transformers, imported with `wb import hf`, opened as every view,
with logits identical to transformers' own loading and activations equal across capture, TransformerLens and
nnsight. All models are tiny, random-init and trained a few steps here; nothing is downloaded."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench
from tests.conftest import wb
from workbench.errors import IncompatibleCheckpoint
from workbench.models.capture import capture

STEPS = (0, 1000, 2000)
VOCAB = 96
TOL = 1e-4  # logits across libraries, float32
ACT_TOL = 1e-5  # activations of the same forward pass
ARCHS = {
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, rotary_pct=0.5, rotary_emb_base=5000, bos_token_id=0, eos_token_id=0),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                            bos_token_id=0, eos_token_id=0),
}
HOOKS = ["hook_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.hook_resid_post", "blocks.{l}.attn.hook_pattern",
         "blocks.{l}.hook_attn_out", "blocks.{l}.hook_mlp_out", "ln_final.hook_normalized"]


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    return tok


def write_trajectory(root: Path, config) -> Path:
    """`root/step{N}` folders of one model trained a few AdamW steps between saves, as a public suite ships."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(0))
    for step in STEPS:
        if step:
            model.train()
            for _ in range(3):
                loss = model(data, labels=data).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
        model.eval().save_pretrained(root / f"step{step}")
    word_tokenizer().save(str(root / "tokenizer.json"))
    return root


def import_trajectory(root: Path, arch: str) -> tuple[Path, Path]:
    """A trajectory of `arch` written under `root/src` and imported by `wb import hf` into `root/run`."""
    src = write_trajectory(root / "src", ARCHS[arch]())
    code, out = wb("import", "hf", src, "--out", root / "run")
    assert code == 0, out
    return src, root / "run"


@pytest.fixture(scope="module", params=list(ARCHS))
def imported(request, tmp_path_factory):
    src, run = import_trajectory(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, src, workbench.open(run)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))


def maxdiff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_every_step_opens_with_transformers_own_logits(imported, ids):
    arch, src, run = imported
    assert run.steps == list(STEPS) and run.model_config["model_type"] == arch
    previous = None
    for step in STEPS:
        ours = run.checkpoint(step).to_hf()
        theirs = transformers.AutoModelForCausalLM.from_pretrained(src / f"step{step}", attn_implementation="eager")
        assert type(ours) is type(theirs)
        with torch.no_grad():
            logits = ours(ids).logits
            assert torch.equal(logits, theirs.eval()(ids).logits)
        if previous is not None:
            assert maxdiff(logits, previous) > 1e-3  # training moved the model
        previous = logits
    with pytest.raises(IncompatibleCheckpoint, match=r"supported: llama"):
        run.checkpoint(0).model()


def test_trajectory_of_a_foreign_parameter(imported):
    arch, src, run = imported
    name = {"gpt_neox": "gpt_neox.layers.{layer}.attention.query_key_value.weight",
            "gpt2": "transformer.h.{layer}.attn.c_attn.weight"}[arch]
    traj = run.trajectory(name)
    assert traj.dims[:2] == ("step", "layer") and list(traj.step.values) == list(STEPS)
    from safetensors.torch import load_file

    last = load_file(src / "step2000" / "model.safetensors")[name.format(layer=1)]
    assert torch.equal(torch.from_numpy(traj.sel(step=2000, layer=1).values), last)


def test_generic_capture_equals_transformer_lens_and_nnsight(imported, ids):
    arch, _, run = imported
    ckpt = run.checkpoint(2000)
    logits, acts = capture(ckpt, ids, HOOKS)
    bridge = ckpt.to_hooked_transformer()
    with torch.no_grad():
        tl_logits, cache = bridge.run_with_cache(ids)
    assert maxdiff(logits, tl_logits) <= TOL
    for name, value in acts.items():
        assert maxdiff(value, cache[name]) <= ACT_TOL, name
    nns = ckpt.to_nnsight()
    layers = nns.gpt_neox.layers if arch == "gpt_neox" else nns.transformer.h
    with nns.trace(ids):
        out = layers[1].output.save()
    out = out[0] if isinstance(out, tuple) else out
    assert maxdiff(out, acts["blocks.1.hook_resid_post"]) <= ACT_TOL
    with nns.trace("w3 w4 <|endoftext|> w5"):  # text through the run's tokenizer
        assert nns.output.logits.save() is not None


def test_transformer_lens_config_and_processing(imported, ids):
    arch, _, run = imported
    ckpt = run.checkpoint(1000)
    bridge = ckpt.to_hooked_transformer()
    if arch == "gpt_neox":
        assert bridge.cfg.rotary_base == 5000.0 and bridge.cfg.rotary_dim == 4  # rotary_pct 0.5 of d_head 8
    processed = ckpt.to_hooked_transformer(process_weights=True)
    with torch.no_grad():
        raw, folded = bridge(ids), processed(ids)
    assert maxdiff(raw.log_softmax(-1), folded.log_softmax(-1)) <= TOL
    # TransformerLens's own BOS policy: prepend <|endoftext|> for GPT-2, not for GPT-NeoX (Pythia had none)
    assert bridge.to_tokens("w3 w4").tolist() == ([[3, 4]] if arch == "gpt_neox" else [[0, 3, 4]])


def test_our_trainer_run_opens_in_every_view(tmp_path):
    from training.presets import load
    from training.trainer import Trainer

    model_cfg, cfg = load(None, "tiny", max_steps=10, every=5, early=False)
    model_cfg = replace(model_cfg, vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        max_position_embeddings=64, tie_word_embeddings=True)
    cfg = replace(cfg, n_documents=200, seq_len=32, batch_size=4, warmup_steps=2)
    Trainer(model_cfg, cfg, tmp_path / "run", progress=False).train()
    run = workbench.open(tmp_path / "run")
    ckpt = run.checkpoint(10)
    text = "the cat sat on the mat"
    nns = ckpt.to_nnsight()
    ids = nns.tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist()[0] == run.tokenizer.encode(text).ids  # the wrapper tokenizes as the run does
    with torch.no_grad():
        reference = ckpt.model()(ids)
        with nns.trace(text):
            nn_logits = nns.output.logits.save()
        for logits in (ckpt.to_hf()(ids).logits, ckpt.to_hooked_transformer()(ids), nn_logits):
            assert maxdiff(logits, reference) <= TOL


def test_forward_analyses_run_on_the_imported_trajectory(imported, tmp_path):
    import json
    import random
    import shutil

    import numpy as np

    from workbench.analysis import analyze

    arch, _, run = imported
    path = shutil.copytree(run.location, tmp_path / "run")
    rng = random.Random(0)
    docs = [{"text": " ".join(f"w{rng.randrange(2, VOCAB)}" for _ in range(40)), "domain": d}
            for d in ("a", "b") for _ in range(4)]
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in docs))
    mine = workbench.open(path)
    done = analyze(mine, None, steps=[0, 2000], workers=0, eval_data=data, progress=False)
    assert "memorization" not in done  # needs a corpus and a data order, which an import has not: skipped
    assert all(done[n] == [0, 2000] for n in ("weights", "loss", "activations", "lens", "similarity"))
    mine.refresh()
    # independently: rows of 64 + 1 word ids (the context) per domain, documents joined by <|endoftext|> = 0
    model = mine.checkpoint(2000).to_hf()
    loss = mine.results("loss").sel(step=2000).load()
    norms = mine.results("activations")["resid_norm"].sel(step=2000).values
    for domain in ("a", "b"):
        stream = [t for d in docs if d["domain"] == domain for t in [int(w[1:]) for w in d["text"].split()] + [0]]
        rows = torch.tensor([stream[i * 64: (i + 1) * 64 + 1] for i in range((len(stream) - 1) // 64)])
        with torch.no_grad():
            out = model(rows[:, :-1], output_hidden_states=True)
        ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), rows[:, 1:].flatten())
        assert abs(loss["loss"].sel(domain=domain).item() - ce.item()) <= 1e-5
    lens = mine.results("lens").sel(step=2000).load()
    assert lens["kl"].values[-1] == pytest.approx(0, abs=1e-6) and lens["top1_agreement"].values[-1] == 1
    assert np.all(np.isfinite(norms)) and norms.shape == (2,)
