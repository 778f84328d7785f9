"""The `wb` command line on HF checkpoint folders written by transformers itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import workbench
from tests.conftest import wb

CONFIG = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)


def save_step(folder: Path, seed: int, **save_kwargs) -> Path:
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(folder, **save_kwargs)
    return folder


@pytest.fixture
def suite(tmp_path):
    """A Pythia-style trajectory: step0, step1000, step2000."""
    root = tmp_path / "suite"
    for step in (0, 1000, 2000):
        save_step(root / f"step{step}", seed=step)
    return root


def test_import_trajectory_reads_back_bit_exact(suite, tmp_path):
    code, out = wb("import", "hf", suite, "--out", tmp_path / "run")
    assert code == 0, out
    run = workbench.open(tmp_path / "run")
    assert run.steps == [0, 1000, 2000]
    for step in run.steps:
        want = load_file(suite / f"step{step}" / "model.safetensors")
        got = run.checkpoint(step).state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    code, out = wb("info", tmp_path / "run")
    assert code == 0 and "0, 1000, 2000" in out
    n_params = sum(t.numel() for t in load_file(suite / "step0" / "model.safetensors").values())
    assert f"{n_params:,}" in out


def test_single_folder_styles_and_step_option(tmp_path):
    save_step(tmp_path / "checkpoint-500", 1)
    save_step(tmp_path / "iter_0001500", 2)
    save_step(tmp_path / "final", 3)
    run = tmp_path / "run"
    assert wb("import", "hf", tmp_path / "checkpoint-500", tmp_path / "iter_0001500", "--out", run)[0] == 0
    code, out = wb("import", "hf", tmp_path / "final", "--out", run)
    assert code == 2 and "--step" in out
    assert wb("import", "hf", tmp_path / "final", "--out", run, "--step", "2500")[0] == 0
    assert workbench.open(run).steps == [500, 1500, 2500]


def test_export_loads_in_transformers_with_identical_weights(suite, tmp_path):
    wb("import", "hf", suite, "--out", tmp_path / "run")
    code, out = wb("export", "hf", tmp_path / "run", "--step", "1000", "--out", tmp_path / "exported")
    assert code == 0, out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    want = load_file(suite / "step1000" / "model.safetensors")
    got = model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_export_in_shards_reads_one_tensor_at_a_time(suite, tmp_path, monkeypatch, tiny_config):
    """`--max-shard-size` splits the export as save_pretrained does (an index naming each tensor's file), each
    file as safetensors reads it; the run is read tensor by tensor, never a whole checkpoint."""
    from workbench.store.tensors import TensorGroup

    wb("import", "hf", suite, "--out", tmp_path / "run")
    reads = []
    read_array = TensorGroup.read_array

    async def counted(self, name, arr, step, idx, layers=slice(None)):
        reads.append(layers)
        return await read_array(self, name, arr, step, idx, layers)

    monkeypatch.setattr(TensorGroup, "read", lambda *a, **k: pytest.fail("export read a whole checkpoint"))
    monkeypatch.setattr(TensorGroup, "read_array", counted)
    code, out = wb("export", "hf", tmp_path / "run", "--step", "1000", "--out", tmp_path / "exported",
                   "--max-shard-size", "20KB")
    assert code == 0, out
    want = load_file(suite / "step1000" / "model.safetensors")
    assert len(reads) == len(want) and all(s.stop is None or s.stop - s.start == 1 for s in reads)
    index = json.loads((tmp_path / "exported" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert index["weight_map"].keys() == want.keys()
    for name in files:
        shard = load_file(tmp_path / "exported" / name)  # safetensors itself reads every file
        assert sum(t.numel() * t.element_size() for t in shard.values()) <= 20_000 or len(shard) == 1
        assert all(torch.equal(shard[k], want[k]) and index["weight_map"][k] == name for k in shard)
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    code, out = wb("export", "hf", tmp_path / "run", "--step", "1000", "--out", tmp_path / "again",
                   "--max-shard-size", "big")
    assert code == 2 and "--max-shard-size" in out and "'big'" in out and not (tmp_path / "again").exists()


def test_pickle_only_checkpoint_needs_allow_pickle(tmp_path):
    folder = tmp_path / "step100"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    model.save_pretrained(folder)
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    code, out = wb("import", "hf", folder, "--out", tmp_path / "run")
    assert code == 1 and "--allow-pickle" in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()
    assert wb("import", "hf", folder, "--out", tmp_path / "run", "--allow-pickle")[0] == 0
    got = workbench.open(tmp_path / "run").checkpoint(100).state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_truncated_safetensors_fails_before_anything_is_written(suite, tmp_path):
    f = suite / "step2000" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    code, out = wb("import", "hf", suite, "--out", tmp_path / "run")
    assert code == 1 and "truncated" in out and "step2000" in out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_config_that_disagrees_with_tensors_is_refused(suite, tmp_path):
    cfg_path = suite / "step1000" / "config.json"
    for step in (0, 1000, 2000):
        p = suite / f"step{step}" / "config.json"
        cfg = json.loads(p.read_text())
        cfg["intermediate_size"] = 48
        p.write_text(json.dumps(cfg))
    code, out = wb("import", "hf", suite, "--out", tmp_path / "run")
    assert code == 1 and "intermediate_size" not in out and "mlp" in out and "config" in out, out
    assert not (tmp_path / "run").exists()
    assert cfg_path.exists()


def test_verify_names_a_flipped_byte(suite, tmp_path):
    run = tmp_path / "run"
    wb("import", "hf", suite, "--out", run)
    assert wb("verify", run)[0] == 0
    chunk = max((p for p in (run / "chunks").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, out = wb("verify", run)
    assert code == 1
    assert "corrupt: params/model.embed_tokens.weight at step" in out or "corrupt: params/lm_head.weight at step" in out


def test_verify_flags_a_foreign_checkpoint(tmp_path):
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**CONFIG))
    for step in range(5):
        with torch.no_grad():
            for p in base.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        base.save_pretrained(tmp_path / "suite" / f"step{step * 100}")
    save_step(tmp_path / "suite" / "step200", seed=123)  # a different model's weights at step 200
    wb("import", "hf", tmp_path / "suite", "--out", tmp_path / "run")
    code, out = wb("verify", tmp_path / "run")
    assert code == 1
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("jump")] == ["jump"]
    assert "params at step 200" in out


def test_not_a_run_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "info", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2  # a path of the wrong kind: a usage error
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "export", "hf", str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 2


def test_tokenizer_attaches_to_an_existing_run(suite, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    wb("import", "hf", suite / "step0", "--out", tmp_path / "run")
    assert workbench.open(tmp_path / "run").tokenizer is None
    code, out = wb("import", "hf", suite / "step1000", "--out", tmp_path / "run", "--tokenizer", tmp_path)
    assert code == 0, out
    run = workbench.open(tmp_path / "run")
    assert run.steps == [0, 1000]
    assert run.tokenizer.encode("hello world").ids == [0, 1]
