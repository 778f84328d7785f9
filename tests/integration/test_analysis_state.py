"""Stored results are judged on what an analysis depends on, and nothing cached in a process outlives the
commit it was read from: a rewritten checkpoint is re-read, whatever was analysed before in this process."""

from __future__ import annotations

import shutil

import numpy as np
import torch
import xarray as xr

import workbench
from tests.conftest import wb


def test_weights_results_do_not_depend_on_the_evaluation_set(trained_run):
    code, out = wb("analyze", trained_run, "--only", "weights", "--steps", "0,5", "--workers", "0")
    assert code == 0, out
    code, out = wb("analyze", trained_run, "--steps", "0,5", "--workers", "0")
    assert code == 0, out
    assert "weights: computed 0 step(s) (all were stored already)" in out
    assert "loss: computed 2 step(s): 0, 5" in out


def frobenius(sd: dict[str, torch.Tensor], name: str) -> float:
    return float(torch.linalg.matrix_norm(sd[name].double()))


def test_recompute_after_an_overwrite_reads_the_new_weights(new_run, hf_state_dicts):
    sds = hf_state_dicts((0, 10))
    path, writer = new_run()
    for step, sd in sds.items():
        writer.write_checkpoint(step, sd)
    run = workbench.open(path)
    run.analyze(["weights"], workers=0, progress=False)
    tripled = {k: 3 * v for k, v in sds[10].items()}
    writer.write_checkpoint(10, tripled, overwrite=True)
    run.analyze(["weights"], recompute=True, workers=0, progress=False)
    ds = run.results("weights").sel(step=10)
    for name in ("lm_head.weight", "model.layers.1.mlp.up_proj.weight"):
        np.testing.assert_allclose(float(ds["frobenius_norm"].sel(param=name)), frobenius(tripled, name), rtol=1e-6)
        np.testing.assert_allclose(float(ds["dist_to_prev"].sel(param=name)),
                                   float(torch.linalg.matrix_norm(tripled[name].double() - sds[0][name].double())),
                                   rtol=1e-6)


def test_a_forward_analysis_after_an_overwrite_uses_the_new_model(trained_run, tmp_path):
    """The model of the last step analysed stays loaded in the process; an overwrite of that step must not
    reach the next analysis through it. A copy of the run, never seen by this process, is the reference."""
    run = workbench.open(trained_run)
    run.analyze(["loss"], steps=[30], workers=0, progress=False)
    before = run.results("loss")["loss"].sel(step=30).values
    sd = run.checkpoint(30).state_dict()
    torch.manual_seed(0)
    noisy = {k: v + 0.05 * torch.randn_like(v) for k, v in sd.items()}
    workbench.RunWriter(trained_run).write_checkpoint(30, noisy, overwrite=True)
    run.analyze(["loss"], steps=[30], recompute=True, workers=0, progress=False)
    after = run.results("loss").sel(step=30).load()
    copy = shutil.copytree(trained_run, tmp_path / "copy")
    fresh = workbench.open(copy)
    fresh.analyze(["loss"], steps=[30], recompute=True, workers=0, progress=False)
    assert not np.allclose(after["loss"].values, before)
    xr.testing.assert_allclose(after, fresh.results("loss").sel(step=30).load(), rtol=1e-6)
