"""`analyze`: plan (`workbench.analysis.plan`), execute (`workbench.analysis.executors`) and commit
(`workbench.analysis.commit`), with a progress bar.

Only the driver commits, one commit per analysis. Failed tasks (and results whose commit failed) are not
stored; the others are, and `AnalysisFailed` names which analysis failed at which steps. A re-run computes only
the (analysis, step) pairs not stored yet or whose inputs changed since (`workbench.analysis.provenance`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from workbench.analysis.base import AnalysisFailed
from workbench.analysis.commit import Committer
from workbench.analysis.executors import DaskExecutor, LocalExecutor, check_scheduler_address
from workbench.analysis.plan import make_plan
from workbench.analysis.provenance import summary
from workbench.errors import UsageError, first_line

if TYPE_CHECKING:
    from workbench.store.run import Run

log = logging.getLogger(__name__)

COMMIT_EVERY = 16
COMMIT_INTERVAL = 10.0
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
STREAMABLE = frozenset({"activations", "evaluation", "lens", "loss", "memorization", "probes", "similarity"})  # forward analyses that run on a streamed model


def analyze(run: "Run | str | os.PathLike", names=None, steps=None, *, workers: int | None = None,
            scheduler: str | None = None, progress: bool = True, params: dict[str, dict] | None = None,
            eval_data=None, device: str = "auto", recompute: bool = False, commit_every: int = COMMIT_EVERY,
            commit_interval: float = COMMIT_INTERVAL, retries: int = 2, stream: bool | None = None,
            max_memory: int | None = None, dtype: str | None = None) -> dict[str, list[int]]:
    """Compute `names` (default: every registered analysis) at `steps` (default: all) of `run` and commit
    the results under `results/<name>`; returns {name: steps computed now}.

    Pairs already stored are skipped unless what they read has changed (a checkpoint overwritten, a table or
    the evaluation set changed: they are recomputed, and a warning says how many and why). `recompute=True`
    computes the chosen steps again; it never drops stored steps outside them. `params` =
    {name: {parameter: value}}; `eval_data` = a file for forward analyses (default: the run's held-out
    documents). `workers=0` runs here without Dask; `scheduler` uses an existing Dask cluster.

    Forward passes stream the model block by block from the store (`workbench.models.streamed`) when `stream=True`, or when
    `stream` is None and the float32 model exceeds `max_memory` bytes (without it: a Dask worker's memory
    limit); a log line says which mode and why. `dtype` ("float32", "bfloat16" or "float16") is the forward
    passes' compute dtype (default: float32 on CPU, the stored dtype on CUDA); statistics accumulate in float32
    or wider either way.
    """
    from workbench.store.run import Run
    from workbench.store.writer import RunWriter

    _check_options(workers, scheduler, device, commit_every, commit_interval, retries)
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    run = Run(run.location if isinstance(run, Run) else run)  # the newest snapshot, read once
    plan = make_plan(run, names, steps, params, eval_data, recompute)
    for name, stale in plan.stale.items():
        if stale:
            log.warning(f"{name}: recomputing {summary(stale)} whose inputs changed since they were stored")
    if not plan.tasks:
        return {a.name: [] for a in plan.analyses}
    stream = forward_mode(run, plan, stream, max_memory)
    executor = LocalExecutor() if workers == 0 else DaskExecutor(workers, scheduler, retries)
    committer = Committer(RunWriter(run.location), plan, commit_every, commit_interval)
    failures: list[tuple[str, int, BaseException]] = []
    from tqdm.auto import tqdm

    with tqdm(total=len(plan), desc="analyze", unit="task", disable=not progress) as bar:
        try:
            for outcome in executor.outcomes(plan, device, stream, dtype, committer.seconds_to_due):
                if outcome is not None:
                    if outcome.error is None:
                        committer.add(outcome.analysis, outcome.step, outcome.result)
                    else:
                        failures.append((outcome.analysis.name, outcome.step, outcome.error))
                    bar.update(1)
                if committer.due():
                    committer.flush()
                bar.set_postfix(committed=committer.n_committed, refresh=False)
        finally:  # keep what is finished, also on Ctrl-C or a lost scheduler
            committer.flush()
    failures += committer.failed
    if failures:
        raise _failed(failures, len(plan))
    return {name: sorted(done) for name, done in committer.committed.items()}


def _check_options(workers, scheduler, device, commit_every, commit_interval, retries) -> None:
    if workers is not None and scheduler is not None:
        raise UsageError("give either workers (a local cluster) or scheduler (an existing cluster), not both")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise UsageError(f"--workers must be a non-negative integer, got {workers!r}")
    if scheduler is not None:
        check_scheduler_address(scheduler)
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if not isinstance(commit_every, int) or commit_every < 1:
        raise UsageError(f"--commit-every must be a positive integer, got {commit_every!r}")
    if not commit_interval > 0:
        raise UsageError(f"commit_interval must be a positive number of seconds, got {commit_interval!r}")
    if not isinstance(retries, int) or retries < 0:
        raise UsageError(f"retries must be a non-negative integer, got {retries!r}")


def forward_mode(run: "Run", plan, stream: bool | None, max_memory: int | None) -> bool | None:
    """Whether the forward passes stream the model block by block (None: each Dask worker decides by its memory
    limit); said in a log line when streaming or when `max_memory` decided."""
    from workbench.analysis.state import checkpoint_nbytes
    from workbench.models.streamed import streaming_unsupported
    from workbench.store.hf import format_size

    if max_memory is not None and max_memory <= 0:
        raise UsageError(f"--max-memory must be positive, got {max_memory}")
    forward = {a.name for a, _ in plan.tasks if a.kind == "forward"}
    if not forward or stream is False:
        return False
    if (why_not := streaming_unsupported(run.model_config)) is not None:
        if stream:
            raise UsageError(f"--stream: no block-by-block forward passes for this run: {why_not}")
        return False
    if stream is None and max_memory is None:
        return None
    size = checkpoint_nbytes(run)
    if stream is None:
        stream = size > max_memory
        why = (f"the float32 model, {format_size(size)}, {'exceeds' if stream else 'fits'} --max-memory "
               f"{format_size(max_memory)}")
    else:
        why = f"--stream; the float32 model is {format_size(size)}"
    whole = sorted(forward - STREAMABLE) if stream else []
    log.warning(f"forward passes: {'streamed block by block' if stream else 'whole model'} ({why})"
                + (f"; {', '.join(whole)} load the whole model (not streamed yet)" if whole else ""))
    return stream


def _failed(failures: list[tuple[str, int, BaseException]], total: int) -> AnalysisFailed:
    """One line: each failed analysis with its steps and first error; the rest is stored."""
    def why(e: BaseException) -> str:
        return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__

    by_name: dict[str, list[tuple[int, BaseException]]] = {}
    for name, step, error in failures:
        by_name.setdefault(name, []).append((step, error))
    parts = []
    for name, failed in by_name.items():
        steps = sorted(s for s, _ in failed)
        shown = ", ".join(map(str, steps[:6])) + (f", ... ({len(steps)} steps)" if len(steps) > 6 else "")
        parts.append(f"{name} at step(s) {shown}: {why(failed[0][1])}")
    return AnalysisFailed(f"{len(failures)} of {total} task(s) failed: {'; '.join(parts)}; every other result is "
                          "stored (re-run to retry the failed ones)")
