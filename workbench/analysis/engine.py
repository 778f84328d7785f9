"""Analyses and their registry, and the context a task gets for one step.

An analysis is a class registered with `@register`:

    @register
    class Weights(Analysis):
        name = "weights"
        kind = "weights"                   # "weights": reads parameters only; "forward": runs the model
        dims = ("param",)                  # dimensions of the Dataset of one step (documentation + check)

        @dataclass(frozen=True)
        class Params:                      # its parameters, with defaults (JSON-able values)
            min_tail: int = 10

        def compute(self, ctx: StepContext) -> xr.Dataset:
            ...                            # one step: no `step` dimension; the engine adds it

The runner (`workbench.analysis.runner`) calls `compute` once per (analysis, step) in a Dask worker
process and commits the Datasets under `results/<name>` with a `step` dimension. Every data variable must
say what it is: a `description` (or `long_name`) attribute, and `units` where it has any.

Forward analyses (`kind = "forward"`) get, with no code of their own: the check that the run has a
tokenizer and an evaluation set (else a one-line `UsageError` naming `--eval-data FILE`), the evaluation set
in `ctx.eval_set` (held-out documents of the run or the `--eval-data` file, shipped to every worker;
`ctx.eval_set.token_ids(ctx.tokenizer)`), `ctx.device` ("cuda" when the task was given a GPU), and a
Dask `GPU: 1` resource on their tasks on GPU clusters. A sketch:

    @register
    class Loss(Analysis):
        name, kind, dims = "loss", "forward", ("domain",)

        def compute(self, ctx):
            model = ctx.run.checkpoint(ctx.step).model(device=ctx.device)     # workbench.models view
            per_domain = {d: stats.Mean() for d in set(ctx.eval_set.domains)}
            ...                                                                # batches of token ids
            return xr.Dataset({"loss": ("domain", [...], {"description": "mean next-token loss", "units": "nats"})},
                              coords={"domain": sorted(per_domain)})

Keep the returned Dataset small (statistics, not activations): it travels to the driver, which writes it.
Statistics over batches or partitions use the mergeable classes of `workbench.analysis.stats`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from workbench.errors import UsageError, WorkbenchError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    import xarray as xr

    from workbench.analysis.evalset import EvalSet
    from workbench.store.run import Run

KINDS = ("weights", "forward")


class AnalysisFailed(WorkbenchError):
    """Tasks that failed after their retries; the other results are committed."""


class Analysis:
    """Base class of analyses; see the module docstring."""

    name: ClassVar[str]
    kind: ClassVar[str]
    description: ClassVar[str] = ""
    dims: ClassVar[tuple[str, ...]] = ()
    summary_vars: ClassVar[tuple[str, ...]] = ()  # the variables `wb results` shows (default: every numeric one)

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **params):
        valid = [f.name for f in dataclasses.fields(self.Params)]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise UsageError(f"analysis {self.name!r} has no parameter {unknown[0]!r}; "
                             f"its parameters: {', '.join(valid) or 'none'}")
        self.params = self.Params(**params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"

    def config(self) -> dict[str, Any]:
        """The parameters as a JSON-able dict (stored with the results; a re-run must use the same)."""
        import json

        return json.loads(json.dumps(dataclasses.asdict(self.params)))

    def check(self, run: "Run", eval_set: "EvalSet | None") -> None:
        """Raise `UsageError` when `run` lacks something this analysis needs (called once, in the driver,
        after the engine's own checks: forward analyses already have a tokenizer and an evaluation set)."""

    def memory_per_task(self, run: "Run") -> int:
        """Bytes one task may hold (for the default number of workers): 4 float32 copies of a checkpoint."""
        import math

        n = sum(math.prod(a.shape[2:] if "layer" in a.metadata.dimension_names else a.shape[1:]) *
                (a.shape[1] if "layer" in a.metadata.dimension_names else 1) for a in run.parameter_arrays.values())
        return 4 * 4 * n

    def compute(self, ctx: "StepContext") -> "xr.Dataset":
        """The results of one step, as a Dataset without a `step` dimension."""
        raise NotImplementedError

    @classmethod
    def summary(cls, ds: "xr.Dataset", step: int | None = None) -> "pd.DataFrame":
        """A table for `wb results`: without `step`, per step the mean of every numeric variable over its
        other dimensions; with `step`, that step's values over the other dimensions."""
        import numpy as np
        import pandas as pd

        numeric = [v for v in cls.summary_vars or ds.data_vars if np.issubdtype(ds[v].dtype, np.number)]
        if step is not None:
            one = ds[numeric].sel(step=step)
            multi = [v for v in numeric if one[v].ndim]
            if not multi:
                return pd.DataFrame({v: [one[v].item()] for v in numeric}, index=pd.Index([step], name="step"))
            dims = one[multi[0]].dims
            return one[[v for v in multi if one[v].dims == dims]].to_dataframe()
        cols = {}
        for v in numeric:
            da = ds[v]
            other = [d for d in da.dims if d != "step"]
            cols[v] = (da.mean(other) if other else da).to_series()
        return pd.DataFrame(cols)


    @classmethod
    def plot(cls, ds: "xr.Dataset", step: int | None = None, title: str = ""):
        """A plotly figure of `summary(ds, step)`: a line per variable over the steps, or with `step`, bars
        per row of that step."""
        return summary_figure(cls.summary(ds, step), title)


def summary_figure(table: "pd.DataFrame", title: str = ""):
    """One facet per numeric column: lines over a `step` index, bars over any other index."""
    import plotly.express as px

    table = table.select_dtypes("number")
    flat = table.reset_index()
    index = list(flat.columns[: table.index.nlevels])
    x = index[0]
    if len(index) > 1:
        flat["row"] = flat[index].astype(str).agg(" ".join, axis=1)
        x = "row"
    long = flat.melt(id_vars=[x], value_vars=list(table.columns), var_name="variable")
    over_steps = table.index.name == "step"
    chart = px.line if over_steps else px.bar
    fig = chart(long, x=x, y="value", facet_row="variable", title=title, height=220 * max(1, len(table.columns)),
                **({"markers": True} if over_steps else {}))
    fig.update_yaxes(matches=None, title_text="")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    return fig


_REGISTRY: dict[str, type[Analysis]] = {}
_LOADED_PLUGINS = False


def register(cls: type[Analysis]) -> type[Analysis]:
    """Class decorator: make `cls` runnable by name (`wb analyze --only NAME`)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name.islower():
        raise ValueError(f"{cls.__qualname__}.name must be a lower-case identifier, got {name!r}")
    if getattr(cls, "kind", None) not in KINDS:
        raise ValueError(f"{cls.__qualname__}.kind must be one of {KINDS}, got {getattr(cls, 'kind', None)!r}")
    if not dataclasses.is_dataclass(cls.Params):
        raise ValueError(f"{cls.__qualname__}.Params must be a dataclass")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"analysis {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registry() -> dict[str, type[Analysis]]:
    """Registered analyses by name: the built-ins and those of installed plugins (entry point group
    `workbench.analyses`, each naming a module that registers analyses when imported)."""
    global _LOADED_PLUGINS
    if not _LOADED_PLUGINS:
        _LOADED_PLUGINS = True
        from importlib.metadata import entry_points

        for ep in entry_points(group="workbench.analyses"):
            ep.load()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Analysis]:
    analyses = registry()
    if name not in analyses:
        raise UsageError(f"unknown analysis {name!r}; valid analyses: {', '.join(analyses) or 'none'}")
    return analyses[name]


def resolve(names, params: dict[str, dict] | None = None) -> list[Analysis]:
    """Analysis instances for `names` (None: every registered one; a comma-separated string or a list)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(registry()) if not names else list(dict.fromkeys(names))
    params = dict(params or {})
    out = [get(n)(**params.pop(n, {})) for n in names]
    if params:
        raise UsageError(f"parameters given for {sorted(params)[0]!r}, which is not among the analyses to run "
                         f"({', '.join(names)})")
    return out


def finalize(analysis: Analysis, ds, step: int):
    """Check one step's Dataset and give it its `step` dimension."""
    import xarray as xr

    where = f"analysis {analysis.name!r} at step {step}"
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{where} returned {type(ds).__name__}, not an xarray.Dataset")
    if "step" in ds.dims or "step" in ds.variables:
        raise ValueError(f"{where} returned a Dataset with a 'step' variable or dimension; the engine adds it")
    if analysis.dims and not set(ds.dims) <= set(analysis.dims):
        raise ValueError(f"{where} returned dims {sorted(ds.dims)}, not among its declared dims {analysis.dims}")
    for v in ds.data_vars:
        if not ({"description", "long_name"} & set(ds[v].attrs)):
            raise ValueError(f"{where}: variable {v!r} has no 'description' attribute (say what it is, and its units)")
    return ds.expand_dims(step=[int(step)])


class StepContext:
    """What a task gets: the run (re-opened in the worker from its location), the step, the steps the driver
    saw (so `prev_step` and `init_step` do not move while a trainer appends), the device and, for forward
    analyses, the evaluation set."""

    def __init__(self, run: "Run", step: int, steps: tuple[int, ...], device: str = "cpu",
                 eval_set: "EvalSet | None" = None):
        self.run, self.step, self.steps, self.device, self.eval_set = run, int(step), tuple(steps), device, eval_set

    @property
    def init_step(self) -> int:
        """The run's first checkpoint step."""
        return self.steps[0]

    @property
    def prev_step(self) -> int | None:
        """The checkpoint stored before `step`, None at the first."""
        i = self.steps.index(self.step)
        return self.steps[i - 1] if i else None

    @property
    def tokenizer(self):
        return self.run.tokenizer

    def state_dict(self, step: int | None = None) -> dict[str, "torch.Tensor"]:
        """The checkpoint's parameters under HF names, stored dtype (load into a model for a forward pass)."""
        return self.run.checkpoint(self.step if step is None else step).state_dict()

    def parameters(self, step: int | None = None) -> dict[str, "torch.Tensor"]:
        """Every parameter of the checkpoint at `step` (default: this task's) as float32, stacked by template:
        `[layer, *tensor]` for `{layer}` names, `[1, *tensor]` otherwise (bfloat16 widened exactly). Read
        whole (all arrays decoded concurrently) and kept in a per-process cache: the weights analysis reads
        steps t, t-1 and 0 for every t."""
        step = self.step if step is None else int(step)
        return _CACHE.get((self.run.location, step), lambda: _read_step(self.run, step))

    def matrices(self, template: str, step: int | None = None) -> "torch.Tensor":
        """One stacked parameter from `parameters(step)`, by template (`model.layers.{layer}.mlp.up_proj.weight`)."""
        params = self.parameters(step)
        if template not in params:
            raise UsageError(f"no parameter {template!r} in {self.run.location}; templates: {', '.join(sorted(params))}")
        return params[template]


def _read_step(run: "Run", step: int) -> dict[str, "torch.Tensor"]:
    import torch

    from workbench.store.layout import parse_name

    layers: dict[str, list[tuple[int, "torch.Tensor"]]] = {}
    for name, t in run.checkpoint(step).state_dict().items():  # StepNotFound / CorruptData name the problem
        key = parse_name(name)
        layers.setdefault(key.template, []).append((key.layer if key.layered else 0, t))
    out = {}
    for template, parts in layers.items():
        parts.sort(key=lambda p: p[0])
        ts = [t.float() if t.is_floating_point() else t for _, t in parts]
        out[template] = torch.stack(ts) if len(ts) > 1 or "{layer}" in template else ts[0].unsqueeze(0)
    return out


class _LRU:
    """Decoded tensors by key, least recently used dropped first beyond a byte budget; thread-safe."""

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


def _cache_budget() -> int:
    mb = os.environ.get("WORKBENCH_ANALYSIS_CACHE_MB")
    if mb:
        return int(float(mb) * 2**20)
    try:
        import psutil

        return int(min(2 * 2**30, psutil.virtual_memory().total / 8))
    except ImportError:
        return 2**30


_CACHE = _LRU(_cache_budget())


def clear_cache() -> None:
    """Drop this process's cached checkpoints (on a cluster: `client.run(clear_cache)`)."""
    _CACHE.clear()


# Runs opened by this process (a worker re-opens a run from its location once, not per task).
_RUNS: dict[str, "Run"] = {}
_RUNS_LOCK = threading.Lock()


def open_run(location: str, need: tuple[int, ...] = ()) -> "Run":
    """The run at `location`, opened once per process and refreshed when it lacks a step in `need`."""
    from workbench.store.run import Run

    with _RUNS_LOCK:
        run = _RUNS.get(location)
        if run is None:
            run = _RUNS[location] = Run(location)
        elif not set(need) <= set(run.steps):
            run.refresh()
        return run
