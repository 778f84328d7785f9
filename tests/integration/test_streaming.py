"""Forward passes of the in-repo LLaMA streamed block by block from the store (`StreamedLlama`, issue 19) against the whole model:
the same activations and logits, the same stored results of the analyses that stream, one block read at a
time, and the snapshot a streamed pass started from held while the checkpoint is overwritten."""

from __future__ import annotations

import shutil

import pytest
import torch
import xarray as xr

import workbench
from tests.conftest import wb
from workbench.analysis import analyze
from workbench.analysis.provenance import without
from workbench.models.capture import capture
from workbench.models.streamed import StreamedLlama

FORWARD = ["loss", "activations", "lens", "similarity", "memorization", "evaluation", "probes"]  # all stream
PARAMS = {"similarity": {"tokens": 64}, "memorization": {"sample": 8}, "probes": {"max_tokens": 1500}}
NAMES = ["hook_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.ln1.hook_normalized", "blocks.{l}.attn.hook_pattern",
         "blocks.{l}.mlp.hook_post", "blocks.{l}.hook_resid_post", "ln_final.hook_normalized"]


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 200, (3, 17), generator=g), torch.randint(0, 200, (2, 9), generator=g)]


def assert_streamed_equals_whole(streamed, whole, batches: list[torch.Tensor], names: list[str]) -> None:
    """Every activation `names` of every batch, and the logits, of a streamed pass equal the whole model's."""
    seen: dict[tuple[int, str], torch.Tensor] = {}
    finals = streamed.run(batches, names, lambda i, name, x: seen.__setitem__((i, name), x.clone()))
    for i, ids in enumerate(batches):
        logits, acts = capture(whole, ids, names)
        assert {n for j, n in seen if j == i} == set(acts)
        for name, x in acts.items():
            torch.testing.assert_close(seen[(i, name)], x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(streamed.unembed(finals[i]), logits, rtol=1e-5, atol=1e-5)


def test_streamed_pass_equals_the_whole_model(_trained):
    ckpt = workbench.open(_trained).checkpoint(30)
    assert_streamed_equals_whole(StreamedLlama(ckpt), ckpt.model(), _batches(), NAMES)


def test_streamed_greedy_generation_equals_the_whole_model(_trained):
    ckpt = workbench.open(_trained).checkpoint(30)
    prompts = _batches()
    for got, ids in zip(StreamedLlama(ckpt).generate(prompts, 6), prompts):
        assert torch.equal(got, ckpt.model().generate(ids, 6))


def test_reads_one_block_at_a_time(_trained, monkeypatch):
    """Every stacked parameter is read one layer at a time, each layer once per pass."""
    ckpt = workbench.open(_trained).checkpoint(30)
    reads = []
    real = type(ckpt).array
    monkeypatch.setattr(type(ckpt), "array", lambda self, t, layers=slice(None): reads.append((t, layers))
                        or real(self, t, layers))
    StreamedLlama(ckpt).run(_batches())
    stacked = [(t, l) for t, l in reads if "{layer}" in t]
    assert stacked and all(l.stop - l.start == 1 for _, l in stacked)
    assert len(stacked) == len(set((t, l.start) for t, l in stacked))  # no layer read twice
    assert not [t for t, _ in reads if t in ("model.embed_tokens.weight", "lm_head.weight")]  # rows only, no head


def test_a_streamed_pass_keeps_its_snapshot(trained_run):
    """A checkpoint overwritten after the pass began is not mixed in: the blocks come from the run's snapshot."""
    from workbench.store.writer import RunWriter

    run = workbench.open(trained_run)
    streamed = StreamedLlama(run.checkpoint(30))
    before = [x.clone() for x in StreamedLlama(run.checkpoint(30)).run(_batches())]
    state = run.checkpoint(30).state_dict()
    RunWriter(trained_run).write_checkpoint(30, {k: v * 2 for k, v in state.items()}, overwrite=True)
    for a, b in zip(streamed.run(_batches()), before):
        assert torch.equal(a, b)
    changed = StreamedLlama(workbench.open(trained_run).checkpoint(30)).run(_batches())
    assert not torch.equal(changed[0], before[0])


@pytest.fixture(scope="module")
def whole_results(_trained, tmp_path_factory):
    path = shutil.copytree(_trained, tmp_path_factory.mktemp("whole") / "run")
    analyze(path, FORWARD, steps=[0, 30], workers=0, progress=False, stream=False, params=PARAMS)
    return workbench.open(path)


def test_analyses_streamed_equal_whole(_trained, tmp_path, whole_results, caplog):
    path = shutil.copytree(_trained, tmp_path / "run")
    with caplog.at_level("WARNING"):
        analyze(path, FORWARD, steps=[0, 30], workers=0, progress=False, stream=True, params=PARAMS)
    assert "streamed block by block (--stream" in caplog.text
    run = workbench.open(path)
    for name in FORWARD:
        xr.testing.assert_allclose(without(run.results(name).load()), without(whole_results.results(name).load()),
                                   rtol=1e-5)  # the values; provenance says how each was computed


def test_max_memory_chooses_streaming_and_says_why(_trained, tmp_path, whole_results, caplog):
    path = shutil.copytree(_trained, tmp_path / "run")
    with caplog.at_level("WARNING"):
        code, out = wb("analyze", path, "--only", "loss", "--steps", "30", "--workers", "0", "--max-memory", "100KB")
    assert code == 0, out
    assert "streamed block by block (the float32 model" in caplog.text, caplog.text
    assert "exceeds --max-memory 100.0 KB)" in caplog.text, caplog.text
    xr.testing.assert_allclose(without(workbench.open(path).results("loss").load()),
                               without(whole_results.results("loss").load().sel(step=[30])), rtol=1e-5)
    caplog.clear()
    with caplog.at_level("WARNING"):
        code, out = wb("analyze", path, "--only", "activations", "--steps", "30", "--workers", "0", "--max-memory", "1GB")
    assert code == 0 and "whole model (the float32 model" in caplog.text and "fits --max-memory 1.0 GB" in caplog.text


@pytest.mark.parametrize("command", [["analyze", "--only", "loss"], ["probe"], ["evaluate"]])
@pytest.mark.parametrize("value", ["lots", "0", "-1GB"])
def test_bad_max_memory(trained_run, command, value):
    code, out = wb(command[0], trained_run, *command[1:], "--workers", "0", "--max-memory", value)
    assert code == 2 and "--max-memory" in out and len(out.strip().splitlines()) == 1, out


def test_stream_asked_for_an_architecture_it_does_not_cover(tmp_path):
    """Block-by-block passes need a layer layout (the in-repo LLaMA's, or one `capture` knows): asked for on an OPT
    run, a one-line refusal; chosen automatically, the whole model."""
    import types

    import transformers

    from workbench.analysis.runner import forward_mode
    from workbench.errors import UsageError

    model = transformers.AutoModelForCausalLM.from_config(transformers.OPTConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
        max_position_embeddings=64, word_embed_proj_dim=32))
    model.save_pretrained(tmp_path / "src" / "step0")
    assert wb("import", "hf", tmp_path / "src", "--out", tmp_path / "run")[0] == 0
    run = workbench.open(tmp_path / "run")
    plan = types.SimpleNamespace(tasks=[(types.SimpleNamespace(name="loss", kind="forward"), 0)])
    with pytest.raises(UsageError, match="--stream: no block-by-block forward passes for this run: model_type 'opt' "
                                         "has no layer layout here"):
        forward_mode(run, plan, True, None)
    assert forward_mode(run, plan, None, 1) is False


# Largest relative difference, bfloat16 compute against float32, measured on this run (test_bfloat16_...), with
# a margin of ~10x: what a user of `--dtype bfloat16` should expect of each statistic (docs/SCALE.md).
BF16_BOUNDS = {"loss": 5e-4, "perplexity": 3e-3, "token_loss": 2e-2, "attn_entropy": 5e-4, "fire_rate": 5e-3,
               "massive_ratio": 5e-2, "massive_value": 5e-2, "resid_norm": 5e-3, "sink_mass": 1e-3,
               "resid_kurtosis": 5e-3, "kl": 5e-3, "top1_agreement": 2e-2}


@pytest.mark.parametrize("stream", [False, True])
def test_bfloat16_compute_stays_within_documented_bounds(_trained, tmp_path, whole_results, stream):
    import numpy as np

    path = shutil.copytree(_trained, tmp_path / "run")
    analyze(path, ["loss", "activations", "lens"], steps=[30], workers=0, progress=False, dtype="bfloat16",
            stream=stream)
    run, checked = workbench.open(path), set()
    for name in ("loss", "activations", "lens"):
        a, b = whole_results.results(name).load().sel(step=[30]), run.results(name).load()
        for v, bound in BF16_BOUNDS.items():
            if v in a:
                x, y = a[v].values, b[v].values
                rel = np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-3))
                assert 0 < rel <= bound, (name, v, rel)  # 0 would mean the dtype was ignored
                checked.add(v)
    assert checked == set(BF16_BOUNDS)


def test_unknown_dtype(trained_run):
    code, out = wb("analyze", trained_run, "--only", "loss", "--workers", "0", "--dtype", "float64")
    assert code == 2 and "--dtype must be one of float32, bfloat16, float16" in out, out


def test_how_the_forward_passes_ran_is_recorded(_trained, tmp_path):
    path = shutil.copytree(_trained, tmp_path / "run")
    analyze(path, ["loss", "weights"], steps=[0], workers=0, progress=False, dtype="bfloat16", stream=True)
    analyze(path, ["activations"], steps=[0], workers=0, progress=False)
    run = workbench.open(path)
    code = {name: run.results_coords(name, ["provenance_code"])[0]["provenance_code"]
            for name in ("loss", "weights", "activations")}
    assert code["loss"].endswith("; forward passes in bfloat16 on cpu, streamed"), code
    assert code["activations"].endswith("; forward passes in float32 on cpu"), code
    assert "forward passes" not in code["weights"], code
