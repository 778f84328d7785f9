"""Training across processes (issue 20, first slice): two ranks under the torchrun CLI on loopback (gloo, CPU),
DistributedDataParallel, against one process on the same global batch — the loss of every step, the final
weights and the recorded data order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from tests.conftest import SMALL_TOML, wb

STEPS = 50


def _train(tmp_path: Path, name: str, *extra: str, nproc: int | None = None) -> Path:
    """`wb train` of SMALL_TOML for STEPS steps (global batch 4), as a user runs it."""
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    out = tmp_path / name
    args = ["train", "--config", str(tmp_path / "small.toml"), "--max-steps", str(STEPS), "--out", str(out), *extra]
    if nproc is None:
        code, text = wb(*args)
        assert code == 0, text
    else:  # the real executable: --nproc starts torchrun, which starts the ranks
        wb_exe = str(Path(sys.executable).parent / "wb")
        done = subprocess.run([wb_exe, *args, "--nproc", str(nproc)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return workbench.open(_train(tmp_path_factory.mktemp("one"), "run"))


@pytest.mark.parametrize("extra", [(), ("--micro-batch-size", "1")], ids=["ddp", "ddp-accumulating"])
def test_two_ranks_follow_one_process(tmp_path, one_process, extra):
    run = workbench.open(_train(tmp_path, "run", *extra, nproc=2))
    assert run.steps == one_process.steps
    assert run.train_config["processes"] == 2 and run.train_config["parallel"] == "ddp"
    assert run.train_config["accumulation_steps"] == (2 if extra else 1)
    assert run.train_config["micro_batch_size"] == (1 if extra else 2)
    a, b = run.metrics(), one_process.metrics()
    assert list(a.index) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    pd.testing.assert_frame_equal(run.table("data/order"), one_process.table("data/order"), check_like=True)
    last, ref = run.checkpoint(STEPS).state_dict(), one_process.checkpoint(STEPS).state_dict()
    for name, t in ref.items():
        torch.testing.assert_close(last[name], t, rtol=1e-5, atol=1e-6)


def test_a_global_batch_that_does_not_split(tmp_path):
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    code, out = wb("train", "--config", tmp_path / "small.toml", "--out", tmp_path / "run", "--micro-batch-size", "3")
    assert code == 2 and "batch_size 4 does not split into micro-batches of 3 rows on 1 process" in out, out
    assert not (tmp_path / "run").exists()
