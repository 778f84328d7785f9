"""The Dask worker plugin that gives each worker process one `WorkerState` (imported only with Dask)."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from workbench.analysis.state import WorkerState

PLUGIN = "workbench-state"


class StatePlugin(WorkerPlugin):
    """One `WorkerState` per worker process, created when the plugin is registered (or the worker starts),
    dropped when it is replaced."""

    def __init__(self):
        self.state: WorkerState | None = None

    def setup(self, worker) -> None:
        self.state = WorkerState()

    def teardown(self, worker) -> None:
        if self.state is not None:
            self.state.clear()
