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
