"""Training across processes (issue 20): two ranks under the torchrun CLI on loopback (gloo, CPU), DDP and FSDP2,
against one process on the same global batch — the loss of every step, the final weights and optimizer state,
the recorded data order; FSDP checkpoints written by every rank into one commit; resuming at the same world size
(bit for bit) and at another (2 -> 1, 1 -> 2); a rank killed mid-run, restarted by torchrun, continuing from the
last commit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from tests.conftest import SMALL_TOML, wb
from workbench.store.storage import open_repository

STEPS = 50
WB = str(Path(sys.executable).parent / "wb")


def _args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    return ["train", "--config", str(tmp_path / "small.toml"), "--max-steps", str(STEPS), "--out", str(out), *extra]


def _train(tmp_path: Path, name: str, *extra: str, nproc: int | None = None) -> Path:
    """`wb train` of SMALL_TOML for STEPS steps (global batch 4), as a user runs it."""
    out = tmp_path / name
    _wb(_args(tmp_path, out, *extra), nproc)
    return out


def _wb(args: list[str], nproc: int | None) -> None:
    if nproc is None:
        code, text = wb(*args)
        assert code == 0, text
    else:  # the real executable: --nproc starts torchrun, which starts the ranks
        done = subprocess.run([WB, *args, "--nproc", str(nproc)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]


def _back_to(path: Path, step: int) -> None:
    """The run as it was when `step` was committed (as if training had stopped there)."""
    repo = open_repository(str(path))
    repo.reset_branch("main", repo.lookup_tag(f"step-{step}"))


def _assert_follows(run, ref, rtol: float = 1e-5) -> None:
    """`run` trained the steps `ref` did, on the same data, to the same losses, weights and optimizer state."""
    assert run.steps == ref.steps
    a, b = run.metrics(), ref.metrics()
    assert list(a.index) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=rtol)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    pd.testing.assert_frame_equal(run.table("data/order"), ref.table("data/order"), check_like=True)
    last, want = run.checkpoint(STEPS), ref.checkpoint(STEPS)
    state = last.state_dict()
    for name, t in want.state_dict().items():
        torch.testing.assert_close(state[name], t, rtol=rtol, atol=1e-6)
    moments = last.optimizer_state()
    for name, slots in want.optimizer_state().items():
        for slot, t in slots.items():
            torch.testing.assert_close(moments[name][slot], t, rtol=rtol, atol=1e-8)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return workbench.open(_train(tmp_path_factory.mktemp("one"), "run"))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    return workbench.open(_train(tmp_path_factory.mktemp("fsdp"), "run", "--parallel", "fsdp", nproc=2))


@pytest.mark.parametrize("parallel, extra", [("ddp", ()), ("ddp", ("--micro-batch-size", "1")),
                                             ("fsdp", ("--micro-batch-size", "1"))],
                         ids=["ddp", "ddp-accumulating", "fsdp-accumulating"])
def test_two_ranks_follow_one_process(tmp_path, one_process, parallel, extra):
    run = workbench.open(_train(tmp_path, "run", "--parallel", parallel, *extra, nproc=2))
    assert run.train_config["processes"] == 2 and run.train_config["parallel"] == parallel
    assert run.train_config["accumulation_steps"] == (2 if extra else 1)
    assert run.train_config["micro_batch_size"] == (1 if extra else 2)
    _assert_follows(run, one_process)


def test_fsdp_follows_one_process_each_rank_writing_its_tensors(fsdp_run, one_process):
    _assert_follows(fsdp_run, one_process)
    repo = open_repository(fsdp_run.location)
    commits = {s.message: s.metadata for s in repo.ancestry(branch="main")}
    n_tensors = len(one_process.checkpoint(STEPS).state_dict())
    for step in fsdp_run.steps[1:]:  # step 0 is the initial model, written before it is sharded
        parts = commits[f"checkpoint step {step}"]["tensors_by_writer"]
        assert len(parts) == 2 and min(parts) > 0 and sum(parts) == n_tensors, parts
    assert wb("verify", fsdp_run.location)[0] == 0  # every reader: the run is an ordinary one


def test_fsdp_resumes_bit_exactly(tmp_path, fsdp_run):
    path = shutil.copytree(fsdp_run.location, tmp_path / "run")
    _back_to(path, 25)
    assert workbench.open(path).steps[-1] == 25
    _wb(["train", "--out", str(path), "--resume"], nproc=2)
    run = workbench.open(path)
    assert run.steps == fsdp_run.steps
    np.testing.assert_array_equal(run.metrics()["loss"], fsdp_run.metrics()["loss"])
    for name, t in fsdp_run.checkpoint(STEPS).state_dict().items():
        assert torch.equal(run.checkpoint(STEPS).state_dict()[name], t), name


@pytest.mark.parametrize("source, nproc, extra", [("fsdp", None, ()), ("one", 2, ("--parallel", "fsdp"))],
                         ids=["2-to-1", "1-to-2"])
def test_resume_at_another_world_size(tmp_path, one_process, fsdp_run, source, nproc, extra):
    src = fsdp_run if source == "fsdp" else one_process
    path = shutil.copytree(src.location, tmp_path / "run")
    _back_to(path, 25)
    _wb(["train", "--out", str(path), "--resume", *extra], nproc)
    _assert_follows(workbench.open(path), one_process)


def test_a_killed_rank_is_restarted_and_continues_from_the_last_commit(tmp_path, one_process):
    out = tmp_path / "run"
    proc = subprocess.Popen([WB, *_args(tmp_path, out, "--parallel", "fsdp"), "--nproc", "2", "--max-restarts", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = _kill_rank_after(proc.pid, out, rank=1, step=10)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    run = workbench.open(out)
    assert killed < STEPS and run.steps == one_process.steps
    _assert_follows(run, one_process)


def _kill_rank_after(torchrun: int, out: Path, rank: int, step: int) -> int:
    """SIGKILL the worker of `rank` (a grandchild of `wb`: wb -> torchrun -> ranks) once the run has committed
    `step`; returns the run's last step then."""
    import psutil

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            steps = workbench.open(out).steps
        except Exception:  # noqa: BLE001 - not created yet
            steps = []
        if steps and steps[-1] >= step:
            for p in psutil.Process(torchrun).children(recursive=True):
                try:
                    if p.environ().get("RANK") == str(rank) and "TORCHELASTIC_RESTART_COUNT" in p.environ():
                        os.kill(p.pid, signal.SIGKILL)
                        return steps[-1]
                except psutil.Error:
                    continue
        time.sleep(0.1)
    raise AssertionError(f"the run never reached step {step}")


def test_a_global_batch_that_does_not_split(tmp_path):
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    code, out = wb("train", "--config", tmp_path / "small.toml", "--out", tmp_path / "run", "--micro-batch-size", "3")
    assert code == 2 and "batch_size 4 does not split into micro-batches of 3 rows on 1 process" in out, out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value", [("--nproc", "0"), ("--max-restarts", "-1")])
def test_bad_launch_options(tmp_path, option, value):
    args = _args(tmp_path, tmp_path / "run")
    code, out = wb(*args, *(["--nproc", "2"] if option != "--nproc" else []), option, value)
    assert code == 2 and option in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "run").exists()
