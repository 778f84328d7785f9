"""Executing a plan: every (analysis, step) as one task, here (`LocalExecutor`) or on Dask (`DaskExecutor`).

Both yield `Outcome`s as tasks finish, and `None` when nothing finished within the time the caller's commit
loop can wait, so that it can commit on time.

- Dask: by default a `distributed.LocalCluster` of worker processes (one task at a time per process:
  TransformerLens and nnsight are not thread-safe; torch gets cores / workers threads in each), `workers=N`
  of them; or `scheduler=ADDRESS` to use an existing cluster (`dask scheduler`, `dask worker`), whose workers
  must be able to read the run's location (a shared folder or s3://) and import `workbench`.
- A task carries the run's location and snapshot id, the step and the snapshot's steps, never a `Run`: the
  worker opens the run itself and keeps what it reads in its `WorkerState` (a `WorkerPlugin`, registered
  anew by each `analyze`).
- GPUs: forward tasks ask for Dask resource `GPU: 1` when the device is cuda (`device="cuda"`, or `auto` with
  a local GPU or workers that advertise a `GPU` resource: `dask worker ADDRESS --resources GPU=1`). A
  LocalCluster on a GPU machine declares `GPU: 1` on its single worker; for several GPUs start a dask-cuda
  `LocalCUDACluster` (one worker per GPU) and pass its address. Weight tasks never ask for GPUs.
- Failures: a task that raises is retried (`retries`); a task whose worker dies is re-run by the scheduler on
  another worker (up to `distributed.scheduler.allowed-failures` times).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.analysis.base import COMPUTE_ATTR, StepContext, finalize
from workbench.analysis.state import WorkerState
from workbench.errors import UsageError

if TYPE_CHECKING:
    import xarray as xr

    from workbench.analysis.base import Analysis
    from workbench.analysis.plan import Plan

@dataclass(frozen=True)
class Task:
    """One (analysis, step) of a plan, as shipped to a worker (small: no data)."""

    analysis: "Analysis"
    location: str
    snapshot: str
    step: int
    steps: tuple[int, ...]
    device: str
    stream: bool | None = None  # forward passes block by block from the store; None: when the model does not fit
    dtype: str | None = None  # compute dtype of forward passes; None: float32 on CPU, the stored dtype on CUDA


@dataclass(frozen=True)
class Outcome:
    analysis: "Analysis"
    step: int
    result: "xr.Dataset | None"  # the step's Dataset, with its `step` dimension
    error: BaseException | None = None


def run_task(task: Task, eval_set, state: WorkerState | None = None) -> "xr.Dataset":
    """One (analysis, step), in a worker process (its plugin's state) or here (`state`)."""
    state = state or _worker_state()
    run = state.run(task.location, task.snapshot)
    ctx = StepContext(run, task.step, task.steps, state, device=task.device, eval_set=eval_set, stream=task.stream,
                      dtype=task.dtype)
    ds = finalize(task.analysis, task.analysis.compute(ctx), task.step)
    if ctx.compute is not None:
        ds.attrs[COMPUTE_ATTR] = ctx.compute  # into the step's provenance_code (`Committer.add`)
    return ds


def _worker_state() -> WorkerState:
    from distributed import get_worker

    from workbench.analysis.plugin import PLUGIN

    plugin = get_worker().plugins.get(PLUGIN)
    return plugin.state if plugin is not None else WorkerState()  # a worker that missed the plugin: no cache


def _tasks(plan: "Plan", cuda: bool, stream: bool | None = None, dtype: str | None = None) -> list[Task]:
    return [Task(a, plan.location, plan.snapshot, s, plan.steps, "cuda" if cuda and a.kind == "forward" else "cpu",
                 stream, dtype) for a, s in plan.tasks]


class LocalExecutor:
    """Runs the tasks one after another in this process, without Dask (debugging, tiny runs)."""

    def __init__(self, state: WorkerState | None = None):
        self.state = state or WorkerState()

    def outcomes(self, plan: "Plan", device: str, stream: bool | None, dtype: str | None,
                 wait: Callable[[], float]) -> Iterator[Outcome | None]:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError("device cuda asked for, but this machine has no CUDA device")
        cuda = device != "cpu" and torch.cuda.is_available()
        for task in _tasks(plan, cuda, stream, dtype):
            try:
                yield Outcome(task.analysis, task.step, run_task(task, plan.eval_set, self.state))
            except Exception as e:  # noqa: BLE001 - reported with the others at the end, as from Dask
                yield Outcome(task.analysis, task.step, None, e)


class DaskExecutor:
    """Runs the tasks on a LocalCluster of `workers` processes (default: as cores and memory allow) or on
    the cluster at `scheduler`."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, retries: int = 2):
        self.workers, self.scheduler, self.retries = workers, scheduler, retries

    def outcomes(self, plan: "Plan", device: str, stream: bool | None, dtype: str | None,
                 wait: Callable[[], float]) -> Iterator[Outcome | None]:
        from distributed import wait as wait_for

        from workbench.analysis.plugin import PLUGIN, StatePlugin

        forward = any(a.kind == "forward" for a, _ in plan.tasks)
        with self._client(len(plan), plan.memory_per_task, device, forward) as (client, cuda):
            client.register_plugin(StatePlugin(), name=PLUGIN)  # replaces the previous analyze's
            eval_arg = client.scatter(plan.eval_set, broadcast=True, hash=False) if plan.eval_set is not None else None
            tasks, token = _tasks(plan, cuda, stream, dtype), uuid.uuid4().hex[:8]
            prefer = _blocks(tasks, sorted(client.scheduler_info()["workers"]))
            futures = {}
            for i, (task, worker) in enumerate(zip(tasks, prefer)):
                f = client.submit(run_task, task, eval_arg, key=f"{task.analysis.name}-step{task.step}-{token}",
                                  retries=self.retries, pure=False, priority=len(tasks) - i,
                                  resources={"GPU": 1} if task.device == "cuda" else None,
                                  workers=[worker] if worker else None, allow_other_workers=bool(worker))
                futures[f] = task
            pending = set(futures)
            while pending:
                try:
                    done, pending = wait_for(pending, timeout=max(0.2, wait()), return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                for f in done:
                    if f.status not in ("finished", "error", "cancelled"):
                        pending.add(f)  # "lost": its result was held by a worker that died; the scheduler recomputes it
                        continue
                    task = futures.pop(f)
                    if f.status == "finished":
                        yield Outcome(task.analysis, task.step, f.result())
                    else:
                        error = f.exception() if f.status == "error" else RuntimeError("cancelled by the scheduler")
                        yield Outcome(task.analysis, task.step, None, error)
                    f.release()
                if not done:
                    yield None

    @contextmanager
    def _client(self, n_tasks: int, memory: int, device: str, forward: bool) -> Iterator[tuple[object, bool]]:
        """(client, whether forward tasks go to GPUs)."""
        from distributed import Client

        if self.scheduler is not None:
            try:
                client = Client(self.scheduler)  # waits up to distributed.comm.timeouts.connect
            except (OSError, TimeoutError, ValueError) as e:
                raise UsageError(f"cannot reach the Dask scheduler at {self.scheduler!r}: {e}") from None
            try:
                gpus = any("GPU" in (w.get("resources") or {}) for w in client.scheduler_info()["workers"].values())
                if device == "cuda" and forward and not gpus:
                    raise UsageError(f"device cuda asked for, but no worker of {self.scheduler} has a GPU resource "
                                     "(start workers with --resources GPU=1)")
                yield client, forward and (device == "cuda" or (device == "auto" and gpus))
            finally:
                client.close()
            return
        import torch

        cuda = forward and device != "cpu" and torch.cuda.is_available()
        if device == "cuda" and forward and not cuda:
            raise UsageError("device cuda asked for, but this machine has no CUDA device")
        n = self.workers or (1 if cuda else default_workers(n_tasks, memory))
        cluster = local_cluster(n, gpu=cuda)  # torch threads: cores / n, from OMP_NUM_THREADS
        try:
            client = Client(cluster)
            try:
                yield client, cuda
            finally:
                client.close()
        finally:
            cluster.close()


def _blocks(tasks: list[Task], workers: list[str]) -> list[str | None]:
    """A preferred worker per task: contiguous runs of steps per worker, so that a worker's previous step is
    usually still in its cache (the weights analysis reads steps t, t-1 and 0). Only a preference: idle
    workers take (steal) tasks, and a lost worker's tasks go elsewhere."""
    if len(workers) < 2:
        return [None] * len(tasks)
    size = -(-len(tasks) // len(workers))
    return [workers[i // size] for i in range(len(tasks))]


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


def check_scheduler_address(address: str) -> None:
    """`UsageError` unless `address` is a Dask scheduler address (`tcp://HOST:PORT`, as `dask scheduler` prints)."""
    from distributed.comm import parse_address, parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, where = parse_address(address)
        if scheme not in backends:
            raise ValueError
        if scheme in ("tcp", "tls", "ws", "wss") and not parse_host_port(where)[0]:
            raise ValueError
    except ValueError:
        raise UsageError(f"--scheduler {address!r} is not a Dask scheduler address; give tcp://HOST:PORT, as "
                         "`dask scheduler` prints it") from None
