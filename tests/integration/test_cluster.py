"""Analyses on a real cluster, started the way users start one: `dask scheduler` and two `dask worker` processes
(Dask's own command line, loopback), over a run on S3 (moto's server). Workers open the run from its URL; a worker
killed mid-run is replaced and the results equal those computed in one local process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import xarray as xr

import workbench
from tests.analyses import Flaky, attempts, up_proj_norms
from tests.conftest import SMALL_TOML, dask_cluster
from workbench.analysis import analyze, register, unregister

BUILT_IN = ["weights", "loss", "activations", "lens", "similarity", "memorization", "probes", "evaluation"]
PARAMS = {"similarity": {"tokens": 128}, "memorization": {"sample": 8}, "probes": {"max_tokens": 800}}


@pytest.fixture(scope="module")
def cluster(s3_server):
    """`dask scheduler` and two `dask worker` processes on loopback, with the S3 environment; the repository on
    PYTHONPATH, as a user's own analyses (here `tests.analyses`) must be importable by the workers."""
    env = {**os.environ, **s3_server, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with dask_cluster(env, [["--nworkers", "1", "--name", f"w{i}"] for i in range(2)]) as address:
        yield address


@pytest.fixture(autouse=True)
def flaky():
    register(Flaky)
    yield
    unregister(Flaky.name)


def test_every_analysis_on_an_s3_run_with_a_worker_killed_equals_a_local_run(s3, cluster, _trained, tmp_path):
    from training.presets import load
    from training.trainer import Trainer

    (tmp_path / "small.toml").write_text(SMALL_TOML)
    location = f"{s3}/trained"
    Trainer(*load(tmp_path / "small.toml"), location, progress=False).train()  # the same run as _trained, on S3
    log = tmp_path / "log"
    log.mkdir()
    params = {**PARAMS, "test_flaky": {"log_dir": str(log), "die_at": 15}}
    done = analyze(location, [*BUILT_IN, "test_flaky"], scheduler=cluster, progress=False, params=params)
    assert all(done[name] == [0, 5, 10, 15, 20, 25, 30] for name in [*BUILT_IN, "test_flaky"]), done
    assert attempts(log, 15) == 2  # killed once, run again on a live worker
    local = shutil.copytree(_trained, tmp_path / "local")
    analyze(local, BUILT_IN, workers=0, progress=False, params=PARAMS)
    remote, here = workbench.open(location), workbench.open(local)
    for name in BUILT_IN:
        xr.testing.assert_allclose(remote.results(name).load(), here.results(name).load(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(remote.results("test_flaky")["norm"].values, up_proj_norms(remote, 2), rtol=1e-12)


def test_the_task_graph_stays_small(_trained):
    """What travels to the workers is the analysis, the location, the snapshot id and the step: no weights, no
    data (the evaluation set, the largest thing, is scattered once)."""
    from workbench.analysis import make_plan
    from workbench.analysis.executors import _tasks

    plan = make_plan(workbench.open(_trained), BUILT_IN, params=PARAMS)
    sizes = [len(cloudpickle.dumps(task)) for task in _tasks(plan, cuda=False)]
    assert len(sizes) == 8 * 7 and max(sizes) < 4096, max(sizes)
