"""Test analyses that misbehave on purpose, shared by the Dask tests. They live in an importable module
(`tests.analyses`), as a user's own analyses must for workers started with Dask's command line."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import xarray as xr

from workbench.analysis import Analysis


class Flaky(Analysis):
    """Logs every attempt in `log_dir`; SIGKILLs its own worker on the first attempt at `die_at`; raises at
    every step that has a `fail-<step>` file in `log_dir`. Its result is ‖up_proj‖_F per layer."""

    name = "test_flaky"
    kind = "weights"

    @dataclass(frozen=True)
    class Params:
        log_dir: str = ""
        die_at: int = -1

    def compute(self, ctx):
        log = Path(self.params.log_dir)
        attempt = log / f"attempt-{ctx.step}-{time.monotonic_ns()}-{os.getpid()}"
        attempt.touch()
        if ctx.step == self.params.die_at and attempts(log, ctx.step) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if (log / f"fail-{ctx.step}").exists():
            raise RuntimeError(f"boom at {ctx.step}")
        w = ctx.matrices("model.layers.{layer}.mlp.up_proj.weight")
        return xr.Dataset({"norm": ("layer", torch.linalg.vector_norm(w.double(), dim=(1, 2)).numpy(),
                                    {"description": "‖up_proj‖_F per layer", "units": "1"})})


def attempts(log_dir: Path, step: int) -> int:
    """How many times `Flaky` started at `step`."""
    return len(list(Path(log_dir).glob(f"attempt-{step}-*")))


def up_proj_norms(run, layers: int) -> list[list[float]]:
    """`Flaky`'s result computed directly from each checkpoint's tensors."""
    return [[float(torch.linalg.vector_norm(run.checkpoint(s).state_dict()[f"model.layers.{i}.mlp.up_proj.weight"]
                                            .double())) for i in range(layers)] for s in run.steps]
