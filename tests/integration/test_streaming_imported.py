"""Forward passes streamed layer by layer on imported trajectories of other architectures (GPT-NeoX as Pythia,
GPT-2 as LLM-jp v1; `StreamedHF`, issue 19) against the whole transformers model: the same activations under
every hook, logits and greedy continuations, one layer read at a time, and the same stored results of every
forward analysis that runs on an import."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import xarray as xr

import workbench
from tests.integration.test_streaming import assert_streamed_equals_whole
from tests.integration.test_views_imported import ARCHS, VOCAB, import_trajectory
from workbench.analysis import analyze
from workbench.analysis.provenance import without
from workbench.models.capture import available_hooks, generate, open_model
from workbench.models.streamed import StreamedHF, open_streamed


@pytest.fixture(scope="module", params=list(ARCHS))
def imported(request, tmp_path_factory) -> Path:
    return import_trajectory(tmp_path_factory.mktemp(request.param), request.param)[1]


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (3, 17), generator=g), torch.randint(0, VOCAB, (2, 9), generator=g)]


def test_streamed_pass_equals_the_whole_model(imported):
    ckpt = workbench.open(imported).checkpoint(2000)
    streamed = open_streamed(ckpt)
    assert isinstance(streamed, StreamedHF)
    assert_streamed_equals_whole(streamed, open_model(ckpt), _batches(), available_hooks(ckpt))  # every hook


def test_streamed_greedy_generation_equals_the_whole_model(imported):
    ckpt = workbench.open(imported).checkpoint(2000)
    prompts = _batches()
    whole = open_model(ckpt)
    for got, ids in zip(open_streamed(ckpt).generate(prompts, 6), prompts):
        assert torch.equal(got, generate(whole, ids, 6))


def test_reads_one_layer_at_a_time(imported, monkeypatch):
    """Every stacked parameter is read one layer at a time, each layer once per pass; the embedding by its rows."""
    ckpt = workbench.open(imported).checkpoint(2000)
    streamed = open_streamed(ckpt)
    reads = []
    real = type(ckpt).array
    monkeypatch.setattr(type(ckpt), "array", lambda self, t, layers=slice(None): reads.append((t, layers))
                        or real(self, t, layers))
    streamed.run(_batches())
    stacked = [(t, l) for t, l in reads if "{layer}" in t]
    assert stacked and all(l.stop - l.start == 1 for _, l in stacked)
    assert len(stacked) == len(set((t, l.start) for t, l in stacked)) == len(streamed.layer_names) * streamed.n_layers
    assert not [t for t, _ in reads if "{layer}" not in t]  # norms were read once when opened; no embedding


def test_analyses_streamed_equal_whole(imported, tmp_path):
    rng = random.Random(0)
    docs = [{"text": " ".join(f"w{rng.randrange(2, VOCAB)}" for _ in range(40)), "domain": d}
            for d in ("a", "b") for _ in range(4)]
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in docs))
    runs = {}
    for stream in (False, True):
        path = shutil.copytree(imported, tmp_path / f"run-{stream}")
        runs[stream] = analyze(path, None, steps=[0, 2000], workers=0, eval_data=data, progress=False, stream=stream)
    assert runs[True] == runs[False], runs
    forward = [n for n in runs[True] if n != "weights"]
    assert {"loss", "activations", "lens", "similarity"} <= set(forward)
    streamed, whole = workbench.open(tmp_path / "run-True"), workbench.open(tmp_path / "run-False")
    for name in forward:
        xr.testing.assert_allclose(without(streamed.results(name).load()), without(whole.results(name).load()),
                                   rtol=1e-5)
    code = streamed.results_coords("loss", ["provenance_code"])[0]["provenance_code"]
    assert code.endswith("forward passes in float32 on cpu, streamed"), code
