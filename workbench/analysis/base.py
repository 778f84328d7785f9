"""The analysis base class and the context a task gets for one step.

An analysis is a class registered with `@register` (`workbench.analysis.registry`):

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

The runner calls `compute` once per (analysis, step), in a Dask worker process or in this one, and commits
the Datasets under `results/<name>` with a `step` dimension. Every data variable must say what it is: a
`description` (or `long_name`) attribute, and `units` where it has any.

Each stored step records what it read (`workbench.analysis.provenance`): the checkpoints (`reads_checkpoints`:
the step, and "prev" or "init" for analyses comparing with them), the run tables (`reads_tables`, read whole;
`reads_tables_upto`, rows up to the step), the evaluation set for analyses that read one (`reads_eval_set`,
true for forward analyses unless they say otherwise) and the files of `inputs()`. A stored step is reused while
all of that is unchanged, and computed again when any of it changed; other parameters need `recompute`.

Forward analyses (`kind = "forward"`) get, with no code of their own: the check that the run has a
tokenizer and (when `reads_eval_set`) an evaluation set, else a one-line error naming `--eval-data FILE`;
the evaluation set in `ctx.eval_set` (held-out documents of the run or the `--eval-data` file) and its token
ids in `ctx.eval_tokens()`; the model of a step in `ctx.model()` (one per worker, on `ctx.device`); and a
Dask `GPU: 1` resource on their tasks on GPU clusters. A sketch:

    @register
    class Loss(Analysis):
        name, kind, dims = "loss", "forward", ("domain",)

        def compute(self, ctx):
            model = ctx.model()
            per_domain = {d: stats.Mean() for d in set(ctx.eval_set.domains)}
            ...                                                                # batches of token ids
            return xr.Dataset({"loss": ("domain", [...], {"description": "mean next-token loss", "units": "nats"})},
                              coords={"domain": sorted(per_domain)})

Keep the returned Dataset small (statistics, not activations): it travels to the driver, which writes it.
Statistics over batches or partitions use the mergeable classes of `workbench.analysis.stats`; anything
derived from the run that several steps share goes through `ctx.cached` (kept per worker and snapshot).

An analysis brings its own views of its stored results: `summary(ds, step)`, the table `wb results` prints,
and `figure(ds, step, title)`, the plotly figure `wb results --plot` writes (default: the summary table
drawn, lines over the steps or bars at one step); override either. In the dashboard (`wb dashboard`) each
registered analysis has a page, titled `title` (default: its name) and placed by `page_order`: the Streamlit
script named by `page`, a dotted module name (`"mypackage.pages.norms"`; its URL path is the file's name), or
without one a generic page of its `figure` over the steps and at step A, and its `summary` table:

    @register
    class Norms(Analysis):
        name, kind, dims = "norms", "weights", ("layer",)
        title = "Norms"                            # the page's title in the dashboard's navigation
        page = "mypackage.pages.norms"             # a script using `apps.dashboard.state` (omit: generic page)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from workbench.errors import UsageError, WorkbenchError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    import xarray as xr

    from workbench.analysis.evalset import EvalSet
    from workbench.analysis.state import WorkerState
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
    reads_eval_set: ClassVar[bool | None] = None  # None: forward analyses read it, weight analyses do not
    reads_checkpoints: ClassVar[tuple[str, ...]] = ("step",)  # of "step", "prev", "init": what one step reads
    reads_tables: ClassVar[tuple[str, ...]] = ()  # run tables read whole (`data/documents`, ...)
    reads_tables_upto: ClassVar[tuple[str, ...]] = ()  # tables read up to the step (`data/order`)
    title: ClassVar[str] = ""  # the title of its dashboard page (default: the name)
    page: ClassVar[str | None] = None  # module of the Streamlit script of its page (None: the generic page)
    page_order: ClassVar[int] = 100  # where its page sits among the analyses' pages: lower first, then by name

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

    @classmethod
    def needs_eval_set(cls) -> bool:
        return cls.kind == "forward" if cls.reads_eval_set is None else cls.reads_eval_set

    def config(self) -> dict[str, Any]:
        """The parameters as a JSON-able dict (stored with the results; a re-run must use the same)."""
        return json.loads(json.dumps(dataclasses.asdict(self.params)))

    def inputs(self, eval_set: "EvalSet | None") -> dict[str, str]:
        """Fingerprints of what the results read from outside the run: the evaluation set (when the analysis
        reads one); override to add the files it reads. (Checkpoints and run tables come from the class
        variables `reads_checkpoints`, `reads_tables` and `reads_tables_upto`.)"""
        return {"eval_set": eval_set.fingerprint} if self.needs_eval_set() and eval_set is not None else {}

    def check(self, run: "Run", eval_set: "EvalSet | None") -> None:
        """Raise `UsageError` (a bad parameter) or `MissingData` (the run lacks what this analysis needs);
        called once, in the driver, after the engine's own checks of tokenizer and evaluation set."""

    def memory_per_task(self, run: "Run") -> int:
        """Bytes one task may hold (for the default number of workers): 4 float32 copies of a checkpoint."""
        n = sum(math.prod(a.shape[1:]) for a in run.parameter_arrays.values())
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
    def figure(cls, ds: "xr.Dataset", step: int | None = None, title: str = ""):
        """The plotly figure of the results `ds` (at `step`, or over the steps), for `wb results --plot` and
        the generic dashboard page: the `summary` table drawn."""
        from workbench.analysis.summary import summary_figure

        return summary_figure(cls.summary(ds, step), title)


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


COMPUTE_ATTR = "compute"  # a step's Dataset attribute: how its forward passes ran (recorded in its provenance)


def compute_of(model) -> str:
    """How a model computes, as provenance records it: "bfloat16 on cpu, streamed", "float32 on cuda:0"."""
    from workbench.models.streamed import Streamed

    if isinstance(model, Streamed):
        return f"{str(model.dtype).removeprefix('torch.')} on {model.device}, streamed"
    p = next(model.parameters())
    return f"{str(p.dtype).removeprefix('torch.')} on {p.device}"


class StepContext:
    """What a task gets: the run (opened in the worker at the planned snapshot), the step, the steps of that
    snapshot (so `prev_step` and `init_step` do not move while a trainer appends), the device, the
    evaluation set of forward analyses, and the worker's state (everything cached between tasks)."""

    def __init__(self, run: "Run", step: int, steps: tuple[int, ...], state: "WorkerState", device: str = "cpu",
                 eval_set: "EvalSet | None" = None, stream: bool | None = False, dtype: str | None = None):
        self.run, self.step, self.steps, self.state = run, int(step), tuple(steps), state
        self.device, self.eval_set, self.stream, self.dtype = device, eval_set, stream, dtype
        self.compute: str | None = None  # how the forward passes ran, once `model()` was asked for

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

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """`compute()`, kept by the worker for this run's snapshot under `key` (say what it is and the
        parameters it depends on): tables derived from the run that several steps share."""
        return self.state.derived(self.run, key, compute)

    def eval_tokens(self) -> list[list[int]]:
        """Each evaluation document's token ids (no special tokens)."""
        return self.cached(("eval_tokens", self.eval_set.fingerprint),
                           lambda: self.eval_set.token_ids(self.tokenizer))

    def state_dict(self, step: int | None = None) -> dict[str, "torch.Tensor"]:
        """The checkpoint's parameters under HF names, stored dtype (load into a model for a forward pass)."""
        return self.run.checkpoint(self.step if step is None else step).state_dict()

    def parameters(self, step: int | None = None) -> dict[str, "torch.Tensor"]:
        """Every parameter of the checkpoint at `step` (default: this task's) as float32, stacked by template:
        `[layer, *tensor]` for `{layer}` names, `[1, *tensor]` otherwise (bfloat16 widened exactly). Kept by
        the worker when it fits the cache (`WORKBENCH_ANALYSIS_CACHE_MB`); see `matrices` for models that do not."""
        return self.state.parameters(self.run, self.step if step is None else int(step))

    def matrices(self, template: str, step: int | None = None, layers: slice = slice(None)) -> "torch.Tensor":
        """One parameter as `parameters(step)` has it, by template (`model.layers.{layer}.mlp.up_proj.weight`),
        only `layers` of it: from the worker's cached checkpoint when a whole one fits the cache
        (`WORKBENCH_ANALYSIS_CACHE_MB`), else read alone — a model larger than a worker's memory is analysed
        one tensor at a time this way (`layers=slice(i, i + 1)`)."""
        arrays = self.run.parameter_arrays
        if template not in arrays:
            raise UsageError(f"no parameter {template!r} in {self.run.location}; templates: {', '.join(sorted(arrays))}")
        return self.state.matrices(self.run, self.step if step is None else int(step), template, layers)

    def model(self, step: int | None = None, streamable: bool = False) -> "torch.nn.Module":
        """The model of `step` (default: the task's) on the task's device in the task's compute `dtype` (float32
        on CPU, the stored dtype on CUDA, unless `--dtype` says otherwise), eval mode: the in-repo
        LLaMA for the workbench's runs, the transformers model for imported architectures. One per worker.
        An analysis that runs its batches through `forward.stream_batches` / `forward.final_residuals` asks
        `streamable=True`: it then gets a streamed model (blocks read one at a time) when the task streams
        (`stream`: forced, or None and the model does not fit the worker's memory limit)."""
        step = self.step if step is None else int(step)
        model = self.state.model(self.run, step, self.device, self.stream if streamable else False, self.dtype)
        self.compute = compute_of(model)
        return model
