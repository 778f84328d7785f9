"""`analyze`: plan (`workbench.analysis.plan`), execute (`workbench.analysis.executors`) and commit
(`workbench.analysis.commit`), with a progress bar.

Only the driver commits. Failed tasks are not committed; the others are, and `AnalysisFailed` names what
failed. A re-run computes only the (analysis, step) pairs not stored yet.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from workbench.analysis.base import AnalysisFailed
from workbench.analysis.commit import Committer
from workbench.analysis.executors import DaskExecutor, LocalExecutor, check_scheduler_address
from workbench.analysis.plan import make_plan
from workbench.errors import UsageError

if TYPE_CHECKING:
    from workbench.store.run import Run

COMMIT_EVERY = 16
COMMIT_INTERVAL = 10.0
DEVICES = ("auto", "cpu", "cuda")


def analyze(run: "Run | str | os.PathLike", names=None, steps=None, *, workers: int | None = None,
            scheduler: str | None = None, progress: bool = True, params: dict[str, dict] | None = None,
            eval_data=None, device: str = "auto", recompute: bool = False, commit_every: int = COMMIT_EVERY,
            commit_interval: float = COMMIT_INTERVAL, retries: int = 2) -> dict[str, list[int]]:
    """Compute `names` (default: every registered analysis) at `steps` (default: all) of `run` and commit
    the results under `results/<name>`; returns {name: steps computed now}.

    Pairs already stored are skipped (`recompute=True` computes them again and replaces them, keeping the
    other stored steps when they were computed with the same parameters and evaluation set). `params` =
    {name: {parameter: value}}; `eval_data` = a file for forward analyses (default: the run's held-out
    documents). `workers=0` runs here without Dask; `scheduler` uses an existing Dask cluster.
    """
    from workbench.store.run import Run
    from workbench.store.writer import RunWriter

    _check_options(workers, scheduler, device, commit_every, commit_interval, retries)
    run = Run(run.location if isinstance(run, Run) else run)  # the newest snapshot, read once
    plan = make_plan(run, names, steps, params, eval_data, recompute)
    if not plan.tasks:
        return {a.name: [] for a in plan.analyses}
    executor = LocalExecutor() if workers == 0 else DaskExecutor(workers, scheduler, retries)
    committer = Committer(RunWriter(run.location), plan, commit_every, commit_interval)
    failures: list[tuple[str, int, BaseException]] = []
    from tqdm.auto import tqdm

    with tqdm(total=len(plan), desc="analyze", unit="task", disable=not progress) as bar:
        try:
            for outcome in executor.outcomes(plan, device, committer.seconds_to_due):
                if outcome is not None:
                    if outcome.error is None:
                        committer.add(outcome.analysis, outcome.result)
                    else:
                        failures.append((outcome.analysis.name, outcome.step, outcome.error))
                    bar.update(1)
                if committer.due():
                    committer.flush()
                bar.set_postfix(committed=committer.n_committed, refresh=False)
            committer.flush()
        except BaseException:
            try:  # keep what is finished (Ctrl-C, a lost scheduler), then fail
                committer.flush()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
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


def _failed(failures: list[tuple[str, int, BaseException]], total: int) -> AnalysisFailed:
    def why(e: BaseException) -> str:
        text = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {text}" if text else type(e).__name__

    shown = "; ".join(f"{n} at step {s}: {why(e)}" for n, s, e in failures[:3])
    more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    return AnalysisFailed(f"{len(failures)} of {total} task(s) failed after retries, the others are committed "
                          f"(re-run to retry the failed ones): {shown}{more}")
