"""`wb import megatron` against checkpoints megatron-core wrote (tests/fixtures/megatron), and its refusals."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import wb

FIXTURES = Path(__file__).parents[1] / "fixtures" / "megatron"
LAYOUTS = [(f, fmt) for f in ("tp1", "tp2", "pp2", "tp1_tied", "pp2_tied") for fmt in ("torch_dist", "legacy")]


@pytest.mark.parametrize("folder,fmt", LAYOUTS)
def test_import_gives_megatron_logits(tmp_path, folder, fmt):
    import workbench

    code, out = wb("import", "megatron", FIXTURES / folder / fmt, "--out", tmp_path / "run")
    assert code == 0, out
    run = workbench.open(tmp_path / "run")
    assert run.steps == [10, 20]
    ref = np.load(FIXTURES / "reference.npz")
    tokens = torch.tensor(ref["tokens"])
    for step in (10, 20):
        model = run.checkpoint(step).to_hf().eval()
        with torch.no_grad():
            logits = model(tokens).logits
        assert (logits - torch.tensor(ref[f"{folder}/iter_{step:07d}"])).abs().max() < 1e-4


def test_resumable_and_latest(tmp_path):
    src = FIXTURES / "tp1" / "torch_dist"
    assert wb("import", "megatron", src, "--out", tmp_path / "run", "--iterations", ":10")[0] == 0
    code, out = wb("import", "megatron", src, "--out", tmp_path / "run", "--latest")
    assert code == 0 and "20" in out, out
    code, out = wb("import", "megatron", src, "--out", tmp_path / "run")
    assert code == 0 and "imported 0" in out, out


def test_imports_no_megatron_module(tmp_path):
    code = (f"import sys; from workbench.models.megatron import import_megatron; "
            f"import_megatron({str(FIXTURES / 'tp2' / 'legacy')!r}, {str(tmp_path / 'run')!r}, progress=False); "
            f"import_megatron({str(FIXTURES / 'pp2' / 'torch_dist')!r}, {str(tmp_path / 'run2')!r}, progress=False); "
            f"bad = [m for m in sys.modules if m.split('.')[0] == 'megatron']; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


class _Evil:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_malicious_metadata_is_refused_and_not_run(tmp_path):
    folder = tmp_path / "ck" / "iter_0000010"
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(pickle.dumps(_Evil()))
    os.chdir(tmp_path)
    code, out = wb("import", "megatron", tmp_path / "ck", "--out", tmp_path / "run")
    assert code == 1 and "posix.system" in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "run").exists()


def test_malicious_torch_file_is_refused(tmp_path):
    shard = tmp_path / "ck" / "iter_0000010" / "mp_rank_00"
    shard.mkdir(parents=True)
    torch.save({"model": _Evil()}, shard / "model_optim_rng.pt")
    os.chdir(tmp_path)
    code, out = wb("import", "megatron", tmp_path / "ck", "--out", tmp_path / "run")
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "pwned").exists()


def test_not_a_megatron_folder(tmp_path):
    code, out = wb("import", "megatron", tmp_path, "--out", tmp_path / "run")
    assert code == 2 and "not a Megatron checkpoint" in out and len(out.strip().splitlines()) == 1, out


def test_missing_shard(tmp_path):
    src = tmp_path / "ck"
    shutil.copytree(FIXTURES / "tp2" / "legacy", src)
    shutil.rmtree(src / "iter_0000020" / "mp_rank_01")
    code, out = wb("import", "megatron", src, "--out", tmp_path / "run")
    assert code == 1 and "mp_rank_01" in out and "missing" in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "run").exists()


def test_missing_distcp_file(tmp_path):
    src = tmp_path / "ck"
    shutil.copytree(FIXTURES / "tp2" / "torch_dist", src)
    for f in (src / "iter_0000010").glob("__1_*.distcp"):
        f.unlink()
    code, out = wb("import", "megatron", src, "--out", tmp_path / "run")
    assert code == 1 and "missing" in out and len(out.strip().splitlines()) == 1, out


def test_optimizer_only(tmp_path):
    shard = tmp_path / "ck" / "iter_0000010" / "mp_rank_00"
    shard.mkdir(parents=True)
    args = torch.load(FIXTURES / "tp1" / "legacy" / "iter_0000010" / "mp_rank_00" / "model_optim_rng.pt",
                      weights_only=False)["args"]
    torch.save({"args": args, "optimizer": {"state": {}}}, shard / "model_optim_rng.pt")
    code, out = wb("import", "megatron", tmp_path / "ck", "--out", tmp_path / "run")
    assert code == 1 and "no model weights" in out and len(out.strip().splitlines()) == 1, out


def _logits_match(run_path: Path, folder: str, steps=(10, 20)) -> float:
    import workbench

    run = workbench.open(run_path)
    ref = np.load(FIXTURES / "reference.npz")
    worst = 0.0
    for step in steps:
        with torch.no_grad():
            logits = run.checkpoint(step).to_hf().eval()(torch.tensor(ref["tokens"])).logits
        worst = max(worst, float((logits - torch.tensor(ref[f"{folder}/iter_{step:07d}"])).abs().max()))
    return worst


def test_common_state_inside_distcp(tmp_path):
    """megatron-core >= 0.19 writes no common.pt: its contents are the ShardedObject `common_state` in the DCP
    files (`common_state/shard_0_1`, torch.save of [common]). Written here by torch.distributed.checkpoint itself
    from the fixture's tensors, one whole chunk per stacked tensor (as DCP saves an unsharded tensor), with a
    planner that stores byte items as given, as megatron-core's `MCoreSavePlanner.transform_object` does."""
    import io

    import torch.distributed.checkpoint as dcp

    class BytesAsGiven(dcp.DefaultSavePlanner):
        def transform_object(self, write_item, object):
            return object

    from workbench.models.megatron import load_metadata

    src = FIXTURES / "tp1" / "torch_dist"
    for it in (10, 20):
        folder = src / f"iter_{it:07d}"
        meta = load_metadata(folder / ".metadata")
        state = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype)
                 for k, v in meta.state_dict_metadata.items() if hasattr(v, "chunks")}
        dcp.load(state, checkpoint_id=folder, no_dist=True)
        common = torch.load(folder / "common.pt", weights_only=False)
        blob = io.BytesIO()
        torch.save([common], blob)
        out = tmp_path / "ck" / folder.name
        dcp.save({**state, "common_state/shard_0_1": blob}, checkpoint_id=out, no_dist=True,
                 planner=BytesAsGiven())
        shutil.copy(folder / "metadata.json", out / "metadata.json")
        assert not (out / "common.pt").exists()
    code, out = wb("import", "megatron", tmp_path / "ck", "--out", tmp_path / "run")
    assert code == 0, out
    assert _logits_match(tmp_path / "run", "tp1") < 1e-4


def _nested_legacy(model: dict, tied_head: bool) -> dict:
    """An MCore legacy `model` dict in the names of Megatron-LM's earlier (non-MCore) GPT model: nested
    `language_model.{embedding, encoder, output_layer}` with `query_key_value`, `dense`, `dense_h_to_4h`,
    `dense_4h_to_h`, `input_norm`/`post_attention_norm`, `final_norm`, and `word_embeddings_for_head` on the
    last pipeline stage when tied."""
    rename = {"self_attention.linear_qkv.weight": "self_attention.query_key_value.weight",
              "self_attention.linear_proj.weight": "self_attention.dense.weight",
              "mlp.linear_fc1.weight": "mlp.dense_h_to_4h.weight", "mlp.linear_fc2.weight": "mlp.dense_4h_to_h.weight",
              "input_layernorm.weight": "input_norm.weight", "pre_mlp_layernorm.weight": "post_attention_norm.weight"}
    lm = {"embedding": {}, "encoder": {}}
    out = {"language_model": lm}
    for k, v in model.items():
        if v is None:
            continue
        if k == "embedding.word_embeddings.weight":
            lm["embedding"]["word_embeddings"] = {"weight": v}
        elif k == "decoder.final_layernorm.weight":
            lm["encoder"]["final_norm.weight"] = v
        elif k == "output_layer.weight":
            if tied_head:
                out["word_embeddings_for_head"] = {"weight": v}
            else:
                lm["output_layer"] = {"weight": v}
        else:
            n, rest = k.removeprefix("decoder.layers.").split(".", 1)
            lm["encoder"][f"layers.{n}.{rename[rest]}"] = v
    return out


@pytest.mark.parametrize("folder", ["tp2", "pp2_tied"])
def test_earlier_megatron_names(tmp_path, folder):
    src = tmp_path / "ck"
    shutil.copytree(FIXTURES / folder / "legacy", src)
    for f in src.glob("iter_*/mp_rank_*/model_optim_rng.pt"):
        d = torch.load(f, weights_only=False)
        d["model"] = _nested_legacy(d["model"], tied_head="tied" in folder)
        torch.save(d, f)
    code, out = wb("import", "megatron", src, "--out", tmp_path / "run")
    assert code == 0, out
    assert _logits_match(tmp_path / "run", folder) < 1e-4


def test_args_with_megatron_enums(tmp_path):
    """Megatron-LM's args hold its own enums (`attention_backend=AttnBackend.auto`, ...): they load as inert
    stand-ins, without importing megatron; any other class stays refused."""
    script = f"""
import enum, shutil, sys, types
import torch
from pathlib import Path
src, dst = Path({str(FIXTURES / 'tp1' / 'torch_dist')!r}), Path({str(tmp_path / 'ck')!r})
shutil.copytree(src, dst)
for name in ("megatron", "megatron.core", "megatron.core.transformer", "megatron.core.transformer.enums"):
    sys.modules[name] = types.ModuleType(name)
class AttnBackend(enum.Enum):
    flash = 1
    auto = 5
AttnBackend.__module__ = "megatron.core.transformer.enums"
sys.modules["megatron.core.transformer.enums"].AttnBackend = AttnBackend
for f in dst.glob("iter_*/common.pt"):
    d = torch.load(f, weights_only=False)
    d["args"].attention_backend = AttnBackend.auto
    torch.save(d, f)
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    code = (f"import sys; from workbench.models.megatron import import_megatron; "
            f"import_megatron({str(tmp_path / 'ck')!r}, {str(tmp_path / 'run')!r}, progress=False); "
            f"bad = [m for m in sys.modules if m.split('.')[0] == 'megatron']; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
    assert _logits_match(tmp_path / "run", "tp1") < 1e-4


def test_one_layer_reads_only_its_bytes(monkeypatch):
    """A layer's tensor is read alone: the bytes read are those of its own chunks in the .distcp files."""
    from workbench.models import megatron

    reader = megatron.open_iteration(FIXTURES / "tp2" / "torch_dist" / "iter_0000010")
    name = "decoder.layers.mlp.linear_fc1.weight"
    own = sum(info.length for idx, info in reader.meta.storage_data.items()
              if idx.fqn == name and idx.offset[0] == 1)
    read = []
    real = megatron._read_range
    monkeypatch.setattr(megatron, "_read_range", lambda path, offset, n: read.append(n) or real(path, offset, n))
    hf = megatron.to_hf(reader.lazy(), megatron.hf_config(reader.args))
    gate = hf["model.layers.1.mlp.gate_proj.weight"].load()
    up = hf["model.layers.1.mlp.up_proj.weight"].load()
    assert sum(read) == own, (read, own)  # gate and up: one read of the fused linear_fc1 of layer 1
    full = megatron.TorchDist(FIXTURES / "tp1" / "torch_dist" / "iter_0000010")
    fc1 = torch.cat([full.read(name)[1][:64], full.read(name)[1][64:]])
    assert torch.equal(torch.cat([gate, up]), fc1)


def _with_args(tmp_path, folder: str, **changes) -> Path:
    """A copy of a legacy fixture whose stored args are changed."""
    src = tmp_path / "ck"
    shutil.copytree(FIXTURES / folder / "legacy", src)
    for f in src.glob("iter_*/mp_rank_*/model_optim_rng.pt"):
        d = torch.load(f, weights_only=False)
        vars(d["args"]).update(changes)
        torch.save(d, f)
    return src


@pytest.mark.parametrize("changes,message", [
    ({"num_layers": 3}, "the PP stages hold 2 layers, the args say 3"),
    ({"normalization": "LayerNorm"}, "normalization LayerNorm is not RMSNorm"),
    ({"swiglu": False}, "not SwiGLU"),
])
def test_layouts_and_architectures_that_do_not_add_up(tmp_path, changes, message):
    src = _with_args(tmp_path, "pp2", **changes)
    code, out = wb("import", "megatron", src, "--out", tmp_path / "run")
    assert code == 1 and message in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "run").exists()


def test_heads_of_an_imported_run(tmp_path):
    """The imported run records LLaMA's parameter roles: a head is one query group's rows of Megatron's fused QKV."""
    import workbench
    from workbench.models.megatron import TorchDist

    assert wb("import", "megatron", FIXTURES / "tp2" / "torch_dist", "--out", tmp_path / "run")[0] == 0
    run = workbench.open(tmp_path / "run")
    assert run.root.attrs.get("parameter_roles") == run.parameter_roles  # recorded, not derived on reading
    qkv = TorchDist(FIXTURES / "tp1" / "torch_dist" / "iter_0000020").read("decoder.layers.self_attention.linear_qkv.weight")
    group = qkv[1].reshape(2, 4 * 8, 32)[1]  # layer 1, query group 1: [q heads 2, 3 (2×8); k (8); v (8)]
    assert torch.equal(torch.tensor(run.head(1, 3, "q").sel(step=20).values), group[8:16])
    assert torch.equal(torch.tensor(run.head(1, 1, "k").sel(step=20).values), group[16:24])
    assert torch.equal(torch.tensor(run.head(1, 1, "v").sel(step=20).values), group[24:32])
