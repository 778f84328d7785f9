"""Analyses: the Dask engine against a plain loop over checkpoints.

    .venv/bin/python benchmarks/analysis.py [--part b] [--size 25m] [--steps 20] [--reps 1] [--quick]

Part (b), `weights`: a random-init float32 `LlamaForCausalLM` state dict (sizes as in benchmarks/store.py),
nudged by seeded noise per step, written as `--steps` checkpoints of one run. Then the same statistics of
every 2-D parameter at every step (`workbench.analysis.weights.matrix_statistics`) are computed
- by a plain loop: `run.checkpoint(s).state_dict()` per step, the first and previous checkpoints kept in
  memory, one process with torch on every core;
- by `analyze(run, ["weights"], workers=N)` for N = 0 (in this process, no Dask), 1 and 2: "cold" starts
  its own LocalCluster (start-up included), "warm" attaches to an already started one of N worker
  processes (`runner.local_cluster(N)`, `scheduler=ADDRESS`), so the difference is the cluster start-up.
Every engine run recomputes and commits all steps (`recompute=True`), so the times include writing the
results into the run; no checkpoint is cached from an earlier run. Times are medians over `--reps`, each rep
running every variant in turn; ratios are plain loop time / engine time (> 1: the engine is faster). The
engine's numbers are checked against the loop's (largest relative difference over all statistics).
Part (a) (forward-pass analyses) is not written yet.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path
from time import perf_counter

import numpy as np
import torch

import workbench
from workbench.analysis import analyze
from workbench.analysis.runner import local_cluster
from workbench.analysis.weights import STATISTICS, matrix_statistics

SIZES = {  # LlamaConfig fields, as in benchmarks/store.py
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4, vocab_size=1000),
    "25m": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8, vocab_size=32000),
}
STEP_EVERY = 1000


def make_run(folder: Path, size: str, steps: int) -> tuple[Path, int]:
    """A run of `steps` checkpoints; returns its path and the parameter count."""
    import transformers

    config = transformers.LlamaConfig(**SIZES[size], tie_word_embeddings=False)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config).state_dict()
    writer = workbench.create(folder, model_config=config.to_dict())
    sd = {k: v.clone().contiguous() for k, v in base.items()}
    gen = torch.Generator().manual_seed(0)
    for i in range(steps):
        for v in sd.values():
            v.add_(torch.randn(v.shape, generator=gen), alpha=1e-3)
        writer.write_checkpoint(i * STEP_EVERY, sd)
    return folder, sum(v.numel() for v in base.values())


def plain_loop(path: Path) -> dict[tuple[int, str], dict[str, float]]:
    """The same numbers without the engine: load each checkpoint, compare with the first and the previous."""
    run = workbench.open(path)
    out, first, prev = {}, None, None
    for step in run.steps:
        sd = {k: v.float() for k, v in run.checkpoint(step).state_dict().items() if v.ndim == 2}
        first = first or sd
        for name, w in sd.items():
            stats = matrix_statistics(w[None], first[name][None], None if prev is None else prev[name][None])
            out[(step, name)] = {k: float(v[0]) for k, v in stats.items()}
        prev = sd
    return out


def check(path: Path, loop: dict) -> float:
    """Largest relative difference between the engine's stored results and the loop's numbers."""
    ds = workbench.open(path).results("weights").load()
    worst = 0.0
    for (step, name), want in loop.items():
        got = ds.sel(step=step, param=name)
        for v in STATISTICS:
            a, b = float(got[v]), want[v]
            if np.isnan(a) and np.isnan(b):
                continue
            worst = max(worst, abs(a - b) / max(abs(b), 1e-30))
    return worst


def part_b(size: str, steps: int, reps: int, tmp: Path) -> None:
    from contextlib import ExitStack

    from distributed import Client

    from workbench.analysis import engine

    t0 = perf_counter()
    path, n_params = make_run(tmp / f"run-{size}", size, steps)
    print(f"\n(b) weights: {size} LLaMA ({n_params / 1e6:.1f}M parameters), {steps} checkpoints, written in "
          f"{perf_counter() - t0:.1f} s")
    loop: dict = {}
    with ExitStack() as stack:
        warm = {}
        for workers in (1, 2):  # started once, kept for every rep: "warm"
            cluster = stack.enter_context(local_cluster(workers))  # the cluster analyze would start
            client = stack.enter_context(Client(cluster))
            client.run(lambda: __import__("workbench.analysis"))  # imports done before timing
            warm[workers] = (cluster.scheduler_address, client)

        def engine_run(**kwargs):
            engine.clear_cache()  # no checkpoint cached from an earlier rep, in this process or the workers
            for _, client in warm.values():
                client.run(engine.clear_cache)
            return lambda: analyze(path, ["weights"], recompute=True, progress=False, **kwargs)

        runs = {"plain loop (checkpoint().state_dict())": lambda: loop.update(plain_loop(path))}
        for workers in (0, 1, 2):
            label = f"analyze, workers={workers}" + (" (no Dask)" if workers == 0 else ", cold LocalCluster")
            runs[label] = (lambda w: lambda: engine_run(workers=w)())(workers)
        for workers in (1, 2):
            runs[f"analyze, workers={workers}, warm LocalCluster"] = (
                lambda w: lambda: engine_run(scheduler=warm[w][0])())(workers)
        times: dict[str, list[float]] = {label: [] for label in runs}
        diffs: dict[str, float] = {}
        for _ in range(reps):  # each rep runs every variant in turn, so that load from others falls on all alike
            for label, fn in runs.items():
                start = perf_counter()
                fn()
                times[label].append(perf_counter() - start)
                if label.startswith("analyze"):
                    diffs[label] = max(diffs.get(label, 0.0), check(path, loop))
    base = statistics.median(times["plain loop (checkpoint().state_dict())"])
    print(f"{'':46} {'seconds':>8} {'s/step':>7} {'loop/this':>9} {'max rel. diff':>13}")
    for label, ts in times.items():
        t = statistics.median(ts)
        d = f"{diffs[label]:.1e}" if label in diffs else ""
        print(f"{label:46} {t:8.2f} {t / steps:7.3f} {base / t:9.2f} {d:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="b", choices=["b"], help="which part to run (only b so far)")
    parser.add_argument("--size", default="25m", choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 4 steps")
    args = parser.parse_args()
    size, steps = ("tiny", 4) if args.quick else (args.size, args.steps)
    print(f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="wb-bench-analysis-") as tmp:
        part_b(size, steps, args.reps, Path(tmp))
    print(f"load average at end {os.getloadavg()[0]:.1f} (above ~{len(os.sched_getaffinity(0))}: other processes "
          "competed for the CPUs)")


if __name__ == "__main__":
    main()
