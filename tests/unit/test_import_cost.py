"""Reading what the dashboard reads does not import torch (~1.4 s of a cold start); reading tensors still does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
import xarray as xr

from workbench.store import create
from workbench.store.results import Update

# Runs in a fresh interpreter: argv is the run's path and where to save the checkpoint it reads at the end.
READER = r'''
import json, sys, traceback

first_torch = []  # the stack of the first `import torch`, to name the culprit


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not first_torch:
            frames = [f for f in traceback.extract_stack() if not f.filename.startswith("<frozen")]
            first_torch.append("".join(traceback.format_list(frames)))
        return None


sys.meta_path.insert(0, Watch())

import workbench
from workbench.store.storage import bytes_on_disk

path, out = sys.argv[1:]
r = workbench.open(path)
step = r.steps[-1]
r.model_config, r.train_config, r.layout, r.checkpoint_ids, r.parameter_names(), r.checkpoint(step)
r.tokenizer.encode("a b")
r.metrics(), r.documents(), bytes_on_disk(path)
seen = {name: dict(r.results(name).load().sizes) for name in r.stored_results()}
seen["shapes"] = {k: list(a.shape) for k, a in r.parameter_arrays.items()}
assert "torch" not in sys.modules, "torch was imported:\n" + first_torch[0]

import torch

torch.save(r.checkpoint(step).state_dict(), out)
print(json.dumps(seen))
'''


def _small_run(path) -> dict[str, torch.Tensor]:
    """A run of two checkpoints (a stacked float32 array, a bfloat16 vector) with metrics, a corpus, a tokenizer
    and one analysis' results; returns the state dict of its last step."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    writer = create(path, model_config={"model_type": "llama", "hidden_size": 4, "num_hidden_layers": 2},
                    tokenizer=tok)
    torch.manual_seed(0)
    for step in (0, 10):
        sd = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 4) for i in range(2)}
        sd["model.norm.weight"] = torch.randn(4).to(torch.bfloat16)
        writer.write_checkpoint(step, sd, tables={"metrics": {"step": [step], "loss": [5.0 - step / 10]}})
    writer.append({"data/documents": {"document_id": [0, 1], "text": ["a b", "b a"]}}, "corpus")
    ds = xr.Dataset({"norm": (("step", "param"), np.ones((2, 3)))}, coords={"step": [0, 10], "param": list("xyz")})
    writer.write_results({"weights": Update(ds, {"name": "weights"})}, "results")
    return sd


def test_reading_a_run_imports_torch_only_for_tensors(tmp_path):
    want = _small_run(tmp_path / "run")
    out = tmp_path / "state.pt"
    done = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "run"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"weights": {"step": 2, "param": 3},
                    "shapes": {"model.layers.{layer}.mlp.up_proj.weight": [2, 2, 8, 4], "model.norm.weight": [2, 4]}}
    got = torch.load(out, weights_only=True)
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


# Runs in a fresh interpreter: what the dashboard does before a page needs a model.
LISTER = r'''
import sys, traceback

HEAVY = ("torch", "transformers", "transformer_lens", "nnsight", "sklearn")
first = {}  # top-level package -> the stack of its first import, to name the culprit


class Watch:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in first:
            frames = [f for f in traceback.extract_stack() if not f.filename.startswith("<frozen")]
            first[top] = "".join(traceback.format_list(frames))
        return None


sys.meta_path.insert(0, Watch())

from workbench.analysis import registry

r = registry()
[(c.title, c.page, c.page_order, c.description) for c in r.values()]
import workbench.figures

loaded = [m for m in HEAVY if m in sys.modules]
assert not loaded, "".join(f"{m} was imported:\n{first.get(m, '(no stack)')}\n" for m in loaded)
print(len(r))
'''


def test_listing_analyses_imports_no_model_library():
    done = subprocess.run([sys.executable, "-c", LISTER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) > 0
