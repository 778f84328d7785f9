"""Trajectory Workbench: store, analyse and browse every checkpoint of a training run.

    import workbench
    run = workbench.open("runs/tiny")
    run.trajectory("model.layers.{layer}.self_attn.q_proj.weight")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["open", "create", "Run", "Checkpoint", "RunWriter", "errors"]

if TYPE_CHECKING:
    from workbench.api import Checkpoint, Run, RunWriter, create


def open(location) -> "Run":  # noqa: A001 - mirrors zarr.open / xarray.open_dataset
    """Open the run at a local folder or an `s3://bucket/prefix` URL."""
    from workbench.api import Run

    return Run(location)


def __getattr__(name: str):
    # Heavy modules (torch, zarr, icechunk) load on first use, so `import workbench` stays cheap.
    if name in ("create", "Run", "Checkpoint", "RunWriter"):
        import workbench.api

        return getattr(workbench.api, name)
    if name == "errors":
        import workbench.errors

        return workbench.errors
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
