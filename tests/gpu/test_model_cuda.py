"""The model and the analyses on CUDA: forward analyses of one checkpoint equal the CPU results within stated
tolerances, and a short CUDA training run checkpoints, resumes, and follows the CPU run's loss."""

from __future__ import annotations

import shutil

import numpy as np
import torch
import xarray as xr

import workbench
from workbench.analysis import analyze

FORWARD = ["loss", "activations", "lens", "probes", "evaluation"]
TOLERANCE = {"loss": 1e-3, "activations": 1e-2, "lens": 1e-2, "probes": 5e-2, "evaluation": 5e-2}


def test_forward_analyses_on_cuda_equal_the_cpu_results(_trained, tmp_path):
    cpu = shutil.copytree(_trained, tmp_path / "cpu")
    gpu = shutil.copytree(_trained, tmp_path / "gpu")
    params = {"probes": {"max_tokens": 1500}}
    analyze(cpu, FORWARD, steps=[30], workers=0, device="cpu", progress=False, params=params)
    analyze(gpu, FORWARD, steps=[30], workers=0, device="cuda", progress=False, params=params)
    for name in FORWARD:
        a, b = workbench.open(cpu).results(name).load(), workbench.open(gpu).results(name).load()
        for var in a.data_vars:
            if np.issubdtype(a[var].dtype, np.floating) and var != "direction":
                xr.testing.assert_allclose(a[var], b[var], rtol=TOLERANCE[name], atol=TOLERANCE[name])


def test_cuda_training_checkpoints_resumes_and_follows_the_cpu_loss(small_toml, tmp_path):
    from training.presets import load
    from training.trainer import Trainer

    model_cfg, cfg = load(small_toml, device="cuda", max_steps=20)
    Trainer(model_cfg, cfg, tmp_path / "cuda", progress=False).train()
    cuda = workbench.open(tmp_path / "cuda")
    assert cuda.steps == [0, 5, 10, 15, 20]
    Trainer.resuming(tmp_path / "cuda", max_steps=30, progress=False).train()
    model_cfg, cfg = load(small_toml, device="cpu")
    Trainer(model_cfg, cfg, tmp_path / "cpu", progress=False).train()
    gpu_loss = workbench.open(tmp_path / "cuda").metrics()["loss"]
    cpu_loss = workbench.open(tmp_path / "cpu").metrics()["loss"]
    assert list(gpu_loss.index) == list(cpu_loss.index) == list(range(1, 31))
    # bf16 autocast and other kernels: the same trend, not the same bits
    assert abs(gpu_loss.iloc[-5:].mean() - cpu_loss.iloc[-5:].mean()) < 0.05 * cpu_loss.iloc[-5:].mean()
    assert gpu_loss.iloc[-5:].mean() < gpu_loss.iloc[:5].mean()
    assert torch.cuda.max_memory_allocated() > 0
