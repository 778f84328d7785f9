"""The runner: every (analysis, step) pair as one Dask task, results committed into the run as they arrive.

- Cluster: by default a `distributed.LocalCluster` of worker processes (one task at a time per process:
  TransformerLens and nnsight are not thread-safe; torch gets cores / workers threads in each), `workers=N`
  of them; or `scheduler=ADDRESS` to use an existing dask.distributed cluster, whose workers must be able
  to read the run's location (a shared folder or s3://) and import `workbench`. `workers=0` runs the tasks
  one after another in this process, without Dask (debugging).
- Tasks get the run's location, the step and the steps the driver saw, never a `Run`: each worker process
  re-opens the run once (`engine.open_run`) and caches decoded parameters (`StepContext.matrices`).
- GPUs: forward tasks ask for Dask resource `GPU: 1` when the device is cuda (`device="cuda"`, or `auto`
  with a local GPU or workers that advertise a `GPU` resource: `dask worker ADDRESS --resources GPU=1`). A
  LocalCluster on a GPU machine declares `GPU: 1` on its single worker; for several GPUs start a
  dask-cuda `LocalCUDACluster` (one worker per GPU) and pass its address. Weight tasks never ask for GPUs.
- One writer: only the driver commits. It appends the finished steps of each analysis every
  `commit_every` results or `commit_interval` seconds, and at the end, each time one Icechunk commit under
  the run's commit lock (rebased over a trainer's concurrent checkpoints). A killed driver loses only
  uncommitted results; a re-run computes only the (analysis, step) pairs not stored yet.
- Failures: a task that raises is retried (`retries`, default 2); a task whose worker dies is re-run by the
  scheduler on another worker (up to `distributed.scheduler.allowed-failures` times). Failed pairs are not
  committed; the others are, and `AnalysisFailed` names what failed.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from workbench.analysis import engine, evalset, results
from workbench.analysis import steps as steps_mod
from workbench.analysis.engine import Analysis, AnalysisFailed
from workbench.errors import UsageError

if TYPE_CHECKING:
    from workbench.store.run import Run

COMMIT_EVERY = 16
COMMIT_INTERVAL = 10.0
_THREADS_SET = False
log = logging.getLogger(__name__)


def analyze(run: "Run | str", names=None, steps=None, *, workers: int | None = None, scheduler: str | None = None,
            progress: bool = True, params: dict[str, dict] | None = None, eval_data=None, device: str = "auto",
            recompute: bool = False, commit_every: int = COMMIT_EVERY, commit_interval: float = COMMIT_INTERVAL,
            retries: int = 2) -> dict[str, list[int]]:
    """Compute `names` (default: every registered analysis) at `steps` (default: all) of `run` and commit
    the results under `results/<name>`; returns {name: steps computed now}. Pairs already stored are
    skipped (`recompute=True` replaces them). `params` = {name: {parameter: value}}; `eval_data` = a file
    for forward analyses (default: the run's held-out documents)."""
    from workbench.store.run import Run

    run = run if isinstance(run, Run) else Run(run)
    run.refresh()
    if workers is not None and scheduler is not None:
        raise UsageError("give either workers (a local cluster) or scheduler (an existing cluster), not both")
    if workers is not None and workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda")
    analyses = engine.resolve(names, params)
    chosen = steps_mod.select(run.steps, steps)
    try:
        eval_set = evalset.resolve(run, analyses, eval_data)
    except UsageError as e:
        if names or all(a.kind == "forward" for a in analyses):
            raise
        # Asked for "everything": run what the run allows, and say what was left out and why.
        skipped = [a.name for a in analyses if a.kind == "forward"]
        log.warning(f"skipping {', '.join(skipped)}: {e}")
        analyses = [a for a in analyses if a.kind != "forward"]
        eval_set = None
    usable = []
    for a in analyses:
        try:
            a.check(run, eval_set)
        except UsageError as e:
            if names:
                raise
            log.warning(f"skipping {a.name}: {e}")
        else:
            usable.append(a)
    analyses = usable
    todo: list[tuple[Analysis, int]] = []
    for a in analyses:
        have = set() if recompute else set(results.check_compatible(run, a, eval_set))
        todo += [(a, s) for s in chosen if s not in have]
    todo.sort(key=lambda t: (t[1], t[0].name))  # step order: a worker's previous step is often still cached
    computed = {a.name: [] for a in analyses}
    if not todo:
        return computed
    committer = _Committer(run, analyses, eval_set, recompute, commit_every, commit_interval)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="analyze", unit="task", disable=not progress)
    failures: list[tuple[str, int, BaseException]] = []
    try:
        if workers == 0:
            _run_here(run, todo, eval_set, device, committer, failures, bar)
        else:
            _run_dask(run, todo, eval_set, device, workers, scheduler, retries, committer, failures, bar)
        committer.flush()
    except BaseException:
        try:  # keep what is finished (Ctrl-C, a lost scheduler), then fail
            committer.flush()
        except Exception:
            pass
        raise
    finally:
        bar.close()
    for name, done in committer.committed.items():
        computed[name] = sorted(done)
    if failures:
        raise _failed(failures, len(todo))
    return computed


def run_task(analysis: Analysis, location: str, step: int, steps: tuple[int, ...], eval_set, device: str,
             threads: int | None = None):
    """One (analysis, step): runs in a worker process; returns that step's Dataset with its `step` dim."""
    global _THREADS_SET
    if threads and not _THREADS_SET:
        import torch

        torch.set_num_threads(threads)
        _THREADS_SET = True
    run = engine.open_run(location, steps)  # re-opened when the driver saw steps this process has not
    ctx = engine.StepContext(run, step, steps, device=device, eval_set=eval_set)
    return engine.finalize(analysis, analysis.compute(ctx), step)


def _run_here(run, todo, eval_set, device, committer, failures, bar) -> None:
    import torch

    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    steps = tuple(run.steps)
    for a, s in todo:
        try:
            ds = run_task(a, run.location, s, steps, eval_set, dev if a.kind == "forward" else "cpu")
        except Exception as e:  # noqa: BLE001 - reported with the others at the end, as from Dask
            failures.append((a.name, s, e))
        else:
            committer.add(a, ds)
        bar.update(1)
        if committer.due():
            committer.flush()
        bar.set_postfix(committed=committer.n_committed, refresh=False)


def _run_dask(run, todo, eval_set, device, workers, scheduler, retries, committer, failures, bar) -> None:
    from distributed import wait

    forward = any(a.kind == "forward" for a, _ in todo)
    memory = max(a.memory_per_task(run) for a in {id(a): a for a, _ in todo}.values())
    with _client(workers, scheduler, len(todo), memory, device, forward) as (client, threads, cuda):
        eval_arg = client.scatter(eval_set, broadcast=True, hash=False) if eval_set is not None else None
        steps, token = tuple(run.steps), uuid.uuid4().hex[:8]
        prefer = _blocks(todo, sorted(client.scheduler_info()["workers"]))
        futures = {}
        for i, ((a, s), worker) in enumerate(zip(todo, prefer)):
            gpu = cuda and a.kind == "forward"
            f = client.submit(run_task, a, run.location, s, steps, eval_arg, "cuda" if gpu else "cpu", threads,
                              key=f"{a.name}-step{s}-{token}", retries=retries, pure=False, priority=len(todo) - i,
                              resources={"GPU": 1} if gpu else None,
                              workers=[worker] if worker else None, allow_other_workers=bool(worker))
            futures[f] = (a, s)
        pending = set(futures)
        while pending:
            try:
                done, pending = wait(pending, timeout=max(0.2, committer.seconds_to_due()), return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            for f in done:
                if f.status not in ("finished", "error", "cancelled"):
                    pending.add(f)  # "lost": its result was held by a worker that died; the scheduler recomputes it
                    continue
                a, s = futures.pop(f)
                if f.status == "finished":
                    committer.add(a, f.result())
                elif f.status == "error":
                    failures.append((a.name, s, f.exception()))
                else:
                    failures.append((a.name, s, RuntimeError("cancelled by the scheduler")))
                f.release()
                bar.update(1)
            if committer.due():
                committer.flush()
            bar.set_postfix(committed=committer.n_committed, refresh=False)


def _blocks(todo: list, workers: list[str]) -> list[str | None]:
    """A preferred worker per task: contiguous runs of steps per worker, so that a worker's previous step is
    usually still in its cache (the weights analysis reads steps t, t-1 and 0). Only a preference: idle
    workers take (steal) tasks, and a lost worker's tasks go elsewhere."""
    if len(workers) < 2:
        return [None] * len(todo)
    size = -(-len(todo) // len(workers))
    return [workers[i // size] for i in range(len(todo))]


@contextmanager
def _client(workers, scheduler, n_tasks, memory, device, forward) -> Iterator[tuple[object, int | None, bool]]:
    """(client, torch threads per task or None, whether forward tasks go to GPUs)."""
    from distributed import Client

    if scheduler is not None:
        try:
            client = Client(scheduler)  # waits up to distributed.comm.timeouts.connect
        except (OSError, TimeoutError) as e:
            raise UsageError(f"cannot reach the Dask scheduler at {scheduler!r}: {e}") from None
        try:
            gpus = any("GPU" in (w.get("resources") or {}) for w in client.scheduler_info()["workers"].values())
            if device == "cuda" and forward and not gpus:
                raise UsageError(f"device cuda asked for, but no worker of {scheduler} has a GPU resource "
                                 "(start workers with --resources GPU=1)")
            yield client, None, forward and (device == "cuda" or (device == "auto" and gpus))
        finally:
            client.close()
        return
    import torch

    cuda = forward and device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and forward and not cuda:
        raise UsageError("device cuda asked for, but this machine has no CUDA device")
    n = workers or (1 if cuda else default_workers(n_tasks, memory))
    threads = max(1, _cores() // n)
    cluster = local_cluster(n, threads, gpu=cuda)
    try:
        client = Client(cluster)
        try:
            yield client, threads, cuda
        finally:
            client.close()
    finally:
        cluster.close()


def local_cluster(workers: int, threads: int | None = None, gpu: bool = False):
    """The `distributed.LocalCluster` that `analyze` starts: `workers` processes running one task at a time,
    each with `threads` BLAS/OpenMP threads (default: cores / workers). Start one yourself to reuse it over
    several calls: `analyze(..., scheduler=cluster.scheduler_address)`.

    Unlike distributed's default, the workers keep glibc's adaptive malloc thresholds: distributed sets
    `MALLOC_TRIM_THRESHOLD_` before spawning workers (to hand freed memory back to the OS), which also
    turns every large temporary tensor into a fresh mmap and page faults — about 35% slower weight
    statistics. Worker memory may therefore look higher to Dask's memory monitor.
    """
    import dask
    from distributed import LocalCluster

    threads = threads or max(1, _cores() // workers)
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    environ.update({k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):  # read by each Nanny when created
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                            silence_logs=logging.ERROR, resources={"GPU": 1} if gpu else None)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(n_tasks: int, memory_per_task: int) -> int:
    """As many worker processes as cores, tasks, and 80% of the available memory allow."""
    try:
        import psutil

        by_memory = int(0.8 * psutil.virtual_memory().available // max(1, memory_per_task))
    except ImportError:
        by_memory = _cores()
    return max(1, min(_cores(), n_tasks, by_memory))


class _Committer:
    """Buffers finished results and appends them to the run, one Icechunk commit per flush."""

    def __init__(self, run, analyses, eval_set, recompute: bool, every: int, interval: float):
        from workbench.store.writer import RunWriter

        self.writer = RunWriter(run.location)
        self.analyses = {a.name: a for a in analyses}
        self.attrs = {a.name: results.analysis_attrs(a, eval_set) for a in analyses}
        stored = results.stored(run)
        self.exists = {a.name: a.name in stored for a in analyses}
        self.replace = {a.name: recompute for a in analyses}
        self.every, self.interval = max(1, int(every)), float(interval)
        self.buffer: dict[str, list] = {a.name: [] for a in analyses}
        self.committed: dict[str, list[int]] = {a.name: [] for a in analyses}
        self.oldest: float | None = None

    @property
    def n_buffered(self) -> int:
        return sum(len(b) for b in self.buffer.values())

    @property
    def n_committed(self) -> int:
        return sum(len(c) for c in self.committed.values())

    def add(self, analysis: Analysis, ds) -> None:
        self.buffer[analysis.name].append(ds)
        if self.oldest is None:
            self.oldest = time.monotonic()

    def seconds_to_due(self) -> float:
        if self.oldest is None:
            return self.interval
        return self.interval - (time.monotonic() - self.oldest)

    def due(self) -> bool:
        n = self.n_buffered
        return n >= self.every or (n > 0 and self.seconds_to_due() <= 0)

    def flush(self) -> None:
        import xarray as xr

        names = [n for n, b in self.buffer.items() if b]
        if not names:
            return
        batches = {n: sorted(self.buffer[n], key=lambda d: int(d["step"].values[0])) for n in names}
        steps = {n: [int(d["step"].values[0]) for d in batches[n]] for n in names}
        message = "; ".join(f"results {n} steps {_compact(steps[n])}" for n in names)
        with self.writer.transaction(message, {"results": steps}) as session:
            for n in names:
                ds = xr.concat(batches[n], dim="step", coords="minimal", compat="override", join="exact")
                results.write(session, self.analyses[n], ds, self.attrs[n], self.exists[n], self.replace[n])
        for n in names:
            self.exists[n], self.replace[n] = True, False
            self.committed[n] += steps[n]
            self.buffer[n] = []
        self.oldest = None


def _compact(steps: list[int]) -> str:
    return ",".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]},...,{steps[-1]} ({len(steps)})"


def _failed(failures: list[tuple[str, int, BaseException]], total: int) -> AnalysisFailed:
    def why(e: BaseException) -> str:
        text = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {text}" if text else type(e).__name__

    shown = "; ".join(f"{n} at step {s}: {why(e)}" for n, s, e in failures[:3])
    more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    return AnalysisFailed(f"{len(failures)} of {total} task(s) failed after retries, the others are committed "
                          f"(re-run to retry the failed ones): {shown}{more}")
