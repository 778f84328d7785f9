"""The run store: every checkpoint of a run in one Icechunk repository of Zarr v3 arrays."""

from workbench.store.layout import Layout
from workbench.store.run import Checkpoint, Run
from workbench.store.writer import RunWriter, create

__all__ = ["Checkpoint", "Layout", "Run", "RunWriter", "create"]
