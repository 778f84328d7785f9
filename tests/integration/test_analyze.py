"""The analysis runner on Dask: worker processes, an existing cluster, dying workers, failing tasks, and a
`wb analyze` killed with SIGKILL that finishes on re-run without recomputing what it had committed.

One 2-worker LocalCluster is shared by the tests of this module (start-up costs seconds); test analyses
come from `tests.analyses` or, defined here, reach its worker processes pickled by value.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
import xarray as xr

import workbench
from tests.analyses import Flaky, attempts, up_proj_norms
from tests.conftest import wb
from workbench.analysis import Analysis, AnalysisFailed, analyze, register, unregister

cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEPS = (0, 10, 20, 30, 40)


class Lengths(Analysis):
    """Forward-kind test analysis: the evaluation set's documents and tokens, as the worker received them."""

    name = "test_lengths"
    kind = "forward"

    def compute(self, ctx):
        ids = ctx.eval_set.token_ids(ctx.tokenizer)
        return xr.Dataset({"documents": ((), len(ids), {"description": "documents in the evaluation set"}),
                           "tokens": ((), sum(map(len, ids)), {"description": "tokens in the evaluation set"}),
                           "on_gpu": ((), int(ctx.device == "cuda"), {"description": "1 if run on a GPU"})})


@pytest.fixture(autouse=True)
def test_analyses():
    register(Flaky)
    register(Lengths)
    yield
    unregister(Flaky.name)
    unregister(Lengths.name)


@pytest.fixture(scope="module")
def cluster():
    """The scheduler address of a 2-process LocalCluster shared by this module's tests."""
    from workbench.analysis.executors import local_cluster

    with local_cluster(2, threads=1) as c:
        yield c.scheduler_address


@pytest.fixture
def run_path(seeded_run):
    return seeded_run(STEPS)


def result_commits(path, repo=None) -> list[dict]:
    """`results` metadata of the run's commits, oldest first."""
    repo = repo or workbench.open(path).repo
    return [s.metadata["results"] for s in repo.ancestry(branch="main") if "results" in (s.metadata or {})][::-1]


def test_two_worker_processes_give_the_numbers_of_one(run_path, cluster):
    run = workbench.open(run_path)
    assert run.analyze(["weights"], workers=1, progress=False) == {"weights": list(STEPS)}  # own LocalCluster
    one = run.results("weights").load()
    assert run.analyze(["weights"], scheduler=cluster, recompute=True, progress=False) == {"weights": list(STEPS)}
    two = run.results("weights").load()
    assert analyze(run_path, ["weights"], workers=0, recompute=True, progress=False) == {"weights": list(STEPS)}
    here = workbench.open(run_path).results("weights").load()
    # One worker process (torch on 2 threads), two (1 thread each, OMP_NUM_THREADS=1), or this process: the
    # same bits (the SVDs run on one thread whatever the thread count, see weights._svdvals).
    xr.testing.assert_identical(one, two)
    xr.testing.assert_identical(here, two)


def test_a_worker_that_dies_mid_task_is_replaced_and_its_task_rerun(run_path, cluster, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    done = analyze(run_path, ["test_flaky"], scheduler=cluster, params={"test_flaky": {"log_dir": str(log), "die_at": 20}},
                   progress=False, commit_every=1)
    assert done == {"test_flaky": list(STEPS)}
    # A result still held by the dead worker is recomputed too; the dying task ran twice.
    assert attempts(log, 20) == 2 and all(attempts(log, s) >= 1 for s in STEPS)
    run = workbench.open(run_path)
    ds = run.results("test_flaky")
    assert ds["step"].values.tolist() == list(STEPS)
    np.testing.assert_allclose(ds["norm"].values, up_proj_norms(run, 3), rtol=1e-12)
    assert sorted(s for c in result_commits(run_path) for s in c["test_flaky"]) == list(STEPS)  # each once


def test_a_failing_task_is_retried_then_reported_and_a_rerun_computes_only_it(run_path, cluster, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    (log / "fail-10").touch()
    params = {"test_flaky": {"log_dir": str(log)}}
    with pytest.raises(AnalysisFailed, match=r"1 of 5 task\(s\) failed: test_flaky at step\(s\) 10: RuntimeError: boom at 10"):
        analyze(run_path, ["test_flaky"], scheduler=cluster, params=params, progress=False)
    assert attempts(log, 10) == 3  # the first try and retries=2
    assert workbench.open(run_path).results("test_flaky")["step"].values.tolist() == [0, 20, 30, 40]
    (log / "fail-10").unlink()
    assert analyze(run_path, ["test_flaky"], scheduler=cluster, params=params, progress=False) == {"test_flaky": [10]}
    assert attempts(log, 10) == 4 and attempts(log, 0) == 1


def test_wb_analyze_on_an_existing_cluster_and_wb_results(run_path, cluster):
    code, out = wb("analyze", run_path, "--only", "weights", "--steps", "0:40:20", "--scheduler", cluster)
    assert code == 0, out
    assert out.strip() == "weights: computed 2 step(s): 0, 20"
    code, out = wb("results", run_path)
    assert code == 0 and out.startswith("weights") and "2 step(s): 0, 20" in out
    code, out = wb("analyze", run_path, "--workers", "2", "--scheduler", cluster)
    assert code == 2 and "not both" in out
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code, out = wb("analyze", run_path, "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2 and "cannot reach the Dask scheduler" in out


def test_forward_tasks_get_the_evaluation_set_on_the_workers(tmp_path, hf_state_dicts, tiny_config, cluster):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    writer = workbench.create(tmp_path / "run", model_config=tiny_config.to_dict(), tokenizer=tok)
    for step, sd in hf_state_dicts((0, 10)).items():
        writer.write_checkpoint(step, sd)
    data = tmp_path / "eval.txt"
    data.write_text("a b a\nb b\n")
    code, out = wb("analyze", tmp_path / "run", "--only", "test_lengths", "--eval-data", data, "--scheduler", cluster)
    assert code == 0, out
    ds = workbench.open(tmp_path / "run").results("test_lengths")
    assert ds["documents"].values.tolist() == [2, 2] and ds["tokens"].values.tolist() == [5, 5]
    assert ds["on_gpu"].values.tolist() == [0, 0]  # no worker advertises a GPU resource


def write_many(path: Path, base: dict[str, torch.Tensor], steps: list[int], config: dict) -> None:
    writer = workbench.create(path, model_config=config)
    g = torch.Generator().manual_seed(0)
    sd = {k: v.clone() for k, v in base.items()}
    for step in steps:
        for v in sd.values():
            v.add_(torch.randn(v.shape, generator=g), alpha=1e-2)
        writer.write_checkpoint(step, sd)


def test_an_interrupted_wb_analyze_finishes_on_rerun_without_recomputing(tmp_path, hf_state_dicts, tiny_config):
    steps = list(range(0, 240, 10))
    base = hf_state_dicts((0,))[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ICECHUNK_LOG": "icechunk=error"}
    for attempt in range(3):  # kill after a few commits, before the end
        path = tmp_path / f"run{attempt}"
        write_many(path, base, steps, tiny_config.to_dict())
        cmd = [sys.executable, "-m", "workbench.cli", "analyze", str(path), "--only", "weights", "--workers", "1",
               "--commit-every", "2"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        repo = workbench.open(path).repo
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline and len(result_commits(path, repo)) < 3:
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-analysis
            proc.wait()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its orphaned worker processes
            except ProcessLookupError:
                pass
        committed = sorted(s for c in result_commits(path) for s in c["weights"])
        if proc.returncode == -signal.SIGKILL and 0 < len(committed) < len(steps):
            break
    else:
        pytest.fail(f"could not kill `wb analyze` between commits: {proc.stderr.read().decode()[-2000:]}")
    run = workbench.open(path)
    before = run.results("weights").load()
    assert before["step"].values.tolist() == committed  # whole steps only
    snapshot = run.repo.lookup_branch("main")
    code, out = wb("analyze", path, "--only", "weights", "--workers", "0")
    assert code == 0, out
    missing = [s for s in steps if s not in committed]
    assert out.strip() == f"weights: computed {len(missing)} step(s): {_steps_text(missing)}"
    new = []
    for snap in workbench.open(path).repo.ancestry(branch="main"):  # newest first, back to the killed run's tip
        if snap.id == snapshot:
            break
        new += (snap.metadata or {}).get("results", {}).get("weights", [])
    assert sorted(new) == missing  # nothing committed twice
    after = workbench.open(path).results("weights").load()
    assert after["step"].values.tolist() == steps
    xr.testing.assert_identical(after.sel(step=committed), before)  # committed steps untouched
    fresh = tmp_path / "fresh"  # what the killed driver's worker committed is what this process computes
    shutil.copytree(path, fresh)
    analyze(fresh, ["weights"], steps=committed, workers=0, recompute=True, progress=False)
    xr.testing.assert_allclose(before, workbench.open(fresh).results("weights").sel(step=committed).load(), rtol=1e-6)


def _steps_text(steps):
    from workbench.cli import _steps_text as text

    return text(steps)


def test_weights_on_a_trained_run_move_away_from_init(trained_run, cluster):
    run = workbench.open(trained_run)
    run.analyze(["weights"], scheduler=cluster, progress=False)
    ds = run.results("weights").load()
    assert ds["step"].values.tolist() == [0, 5, 10, 15, 20, 25, 30]
    mean_dist = ds["dist_to_init"].mean("param").values
    assert mean_dist[0] == 0 and np.all(np.diff(mean_dist) > 0)  # AdamW keeps moving away from init
    assert np.all(ds["cos_to_init"].values <= 1 + 1e-12) and np.all(ds["cos_to_init"].values[1:] < 1)
    ratio = ds["update_ratio"].values[1:]
    assert np.all(np.isfinite(ratio)) and np.all(ratio > 0)
    assert np.all((ds["effective_rank"] <= np.minimum(ds["rows"], ds["cols"]) + 1e-9).values)
    assert np.all((ds["stable_rank"] >= 1 - 1e-9).values)


def test_a_long_lived_cluster_recomputes_an_overwritten_checkpoint(run_path, cluster, hf_state_dicts):
    """Workers keep what they read between `analyze` calls; a rewritten step must be read again."""
    run = workbench.open(run_path)
    run.analyze(["weights"], scheduler=cluster, progress=False)
    tripled = {k: 3 * v for k, v in hf_state_dicts((20,))[20].items()}
    workbench.RunWriter(run_path).write_checkpoint(20, tripled, overwrite=True)
    run.analyze(["weights"], scheduler=cluster, recompute=True, progress=False)
    got = run.results("weights")["frobenius_norm"].sel(step=20, param="model.layers.0.mlp.up_proj.weight")
    want = torch.linalg.matrix_norm(tripled["model.layers.0.mlp.up_proj.weight"].double())
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_recompute_while_this_process_holds_a_dask_client(run_path, cluster):
    """Stored results are re-read in the driver, never through a Dask client the user happens to hold (the
    writable session they come from cannot travel)."""
    from distributed import Client

    run = workbench.open(run_path)
    run.analyze(["weights"], workers=0, progress=False)
    with Client(cluster):
        assert run.analyze(["weights"], steps=[10], workers=0, recompute=True, progress=False) == {"weights": [10]}
    assert run.results("weights")["step"].values.tolist() == list(STEPS)
