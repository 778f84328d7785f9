"""What a worker process keeps between tasks, in one object: the runs it opened, decoded parameters, the
current model and tables derived from a run.

Everything is keyed by the run's location *and snapshot id*: a commit to the run (a rewritten checkpoint, new
data) changes the snapshot, so nothing read before it can answer for it. On Dask the object lives in a
`WorkerPlugin` (`workbench.analysis.executors`); `workers=0` uses a local instance.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from workbench.store.run import Run

RUNS_KEPT = 4  # open runs (each holds its repository and root group)
DERIVED_KEPT = 32  # derived tables (evaluation tokens, memorisation sequences, ...)


class WorkerState:
    """The caches of one worker process (thread-safe); see the module docstring."""

    def __init__(self, cache_bytes: int | None = None):
        self.lock = threading.Lock()
        self.runs: OrderedDict[tuple[str, str], Run] = OrderedDict()
        self.params = LRU(default_cache_bytes() if cache_bytes is None else cache_bytes)
        self.tables: OrderedDict[tuple, Any] = OrderedDict()  # derived tables
        self.current_model: tuple[tuple, torch.nn.Module] | None = None

    def run(self, location: str, snapshot: str) -> "Run":
        """The run at `location` as of `snapshot`, opened once."""
        from workbench.store.run import Run

        key = (location, snapshot)
        with self.lock:
            if key in self.runs:
                self.runs.move_to_end(key)
                return self.runs[key]
        run = Run(location, snapshot=snapshot)
        with self.lock:
            self.runs[key] = run
            while len(self.runs) > RUNS_KEPT:
                self.runs.popitem(last=False)
        return run

    def parameters(self, run: "Run", step: int) -> dict[str, "torch.Tensor"]:
        """`StepContext.parameters`: the checkpoint at `step` as float32 tensors stacked by template."""
        return self.params.get((run.location, run.snapshot, step), lambda: read_parameters(run, step))

    def matrices(self, run: "Run", step: int, template: str, layers: slice) -> "torch.Tensor":
        """`StepContext.matrices`: sliced from the cached checkpoint when a whole one fits the cache, else
        read alone (only `layers`) and not kept, so that a worker needs memory for one tensor, not a model."""
        if checkpoint_nbytes(run) <= self.params.budget:
            return self.parameters(run, step)[template][layers]
        return as_float32(template, run.checkpoint(step).array(template, layers))

    def model(self, run: "Run", step: int, device: str, stream: bool | None = False,
              dtype: str | None = None) -> "torch.nn.Module":
        """The model of `step` in `dtype` (None: float32 on CPU, the stored dtype on CUDA), eval mode: one at a
        time, as tasks come in step order. With `stream` (None: when the float32 model exceeds this Dask worker's
        memory limit) a streamed model (`workbench.models.streamed`), which holds no block."""
        import torch

        from workbench.models.capture import open_model
        from workbench.models.streamed import open_streamed, streaming_unsupported

        if stream is None:
            limit = worker_memory_limit()
            stream = limit is not None and checkpoint_nbytes(run) > limit
        stream = stream and streaming_unsupported(run.model_config) is None
        dtype = getattr(torch, dtype or ("float32" if device == "cpu" else stored_dtype(run)))
        key = (run.location, run.snapshot, step, device, stream, dtype)
        with self.lock:
            if self.current_model is not None and self.current_model[0] == key:
                return self.current_model[1]
            self.current_model = None  # free the previous model before loading the next
            checkpoint = run.checkpoint(step)
            model = open_streamed(checkpoint, device, dtype) if stream else open_model(checkpoint, device, dtype)
            self.current_model = (key, model)
            return model

    def derived(self, run: "Run", key: Hashable, compute: Callable[[], Any]) -> Any:
        """`compute()` kept under (run, snapshot, key)."""
        full = (run.location, run.snapshot, key)
        with self.lock:
            if full in self.tables:
                self.tables.move_to_end(full)
                return self.tables[full]
        value = compute()
        with self.lock:
            self.tables[full] = value
            while len(self.tables) > DERIVED_KEPT:
                self.tables.popitem(last=False)
        return value

    def clear(self) -> None:
        with self.lock:
            self.runs.clear()
            self.tables.clear()
            self.current_model = None
        self.params.clear()


def read_parameters(run: "Run", step: int) -> dict[str, "torch.Tensor"]:
    """Every parameter of `step` by template, floating-point ones as float32 (bfloat16 widened exactly):
    `[layer, ...]` for `{layer}` templates, `[1, ...]` otherwise."""
    stacked = run.checkpoint(step).stacked()  # StepNotFound / CorruptData name the problem
    return {template: as_float32(template, t) for template, t in stacked.items()}


def as_float32(template: str, t: "torch.Tensor") -> "torch.Tensor":
    """A parameter as `StepContext.parameters` gives it: floating point widened to float32, `[1, ...]` unless
    its template is stacked by layer."""
    t = t.float() if t.is_floating_point() else t
    return t if "{layer}" in template else t.unsqueeze(0)


def checkpoint_nbytes(run: "Run") -> int:
    """Bytes of one checkpoint as `read_parameters` returns it (float32)."""
    return sum(math.prod(a.shape[1:]) * 4 for a in run.parameter_arrays.values())


def stored_dtype(run: "Run") -> str:
    """The dtype the run's floating-point parameters are stored in (its first matrix's)."""
    return next((a.attrs["dtype"] for a in run.parameter_arrays.values() if len(a.shape) > 2 and
                 a.attrs["dtype"] in ("float32", "bfloat16", "float16", "float64")), "float32")


def worker_memory_limit() -> int | None:
    """The memory limit of the Dask worker this runs in; None outside a worker or without a limit."""
    try:
        from distributed import get_worker

        return get_worker().memory_manager.memory_limit or None
    except (ImportError, ValueError):
        return None


class LRU:
    """Tensors (or dicts of them) by key, least recently used dropped first beyond a byte budget."""

    def __init__(self, budget: int):
        self.budget, self.size, self.items, self.lock = budget, 0, OrderedDict(), threading.Lock()

    def get(self, key, load):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = load()
        nbytes = _nbytes(value)
        with self.lock:
            if key not in self.items and nbytes <= self.budget:
                self.items[key] = value
                self.size += nbytes
                while self.size > self.budget:
                    _, old = self.items.popitem(last=False)
                    self.size -= _nbytes(old)
        return value

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.size = 0


def _nbytes(value) -> int:
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return value.numel() * value.element_size()


def default_cache_bytes() -> int:
    """`WORKBENCH_ANALYSIS_CACHE_MB`, else an eighth of the machine's memory, at most 2 GiB."""
    mb = os.environ.get("WORKBENCH_ANALYSIS_CACHE_MB")
    if mb:
        return int(float(mb) * 2**20)
    try:
        import psutil

        return int(min(2 * 2**30, psutil.virtual_memory().total / 8))
    except ImportError:
        return 2**30
