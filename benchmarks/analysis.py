"""Analyses: (a) `activations` against a bare forward pass and TransformerLens; (b) the engine against a loop.

    .venv/bin/python benchmarks/analysis.py [--part a|b|all] [--size 25m] [--steps 20] [--reps N] [--quick]
        [--batch B] [--seq-len T] [--batches K]

Without `--part` both parts run. `--reps` defaults to 5 for (a) and 3 for (b).

Part (a), `activations`: a random-init float32 in-repo `training.model.Llama` (`training.config.ModelConfig`
with the sizes below, `num_key_value_heads` = `num_attention_heads` as LlamaConfig's default,
`max_position_embeddings` = the row length), CPU, eval mode, `torch.no_grad()`, torch on every core. Random
token ids in `--batches` batches of `[--batch, --seq-len]` (default 8 x 256, 8 batches for tiny and 4 for
25m) stand for one checkpoint's evaluation set. Every variant runs over the same batches:
- bare: `model(ids)`, logits only (SDPA attention, no capture);
- workbench: what `Activations.compute` does, `Activations.update` per batch (one forward pass without the
  unembedding, which the statistics do not need, its activations streamed into `LayerStats`), then
  `Activations.dataset(...)` once over all batches;
- TransformerLens: `checkpoint.to_hooked_transformer()` of the same weights (a `TransformerBridge` over the
  transformers model, eager attention), `run_with_cache(ids, names_filter=<the same 3 hooks per layer>)`,
  the cache fed into the same `LayerStats`, then the same `dataset(...)`: collect + reduce against
  collect + reduce. The two datasets are compared (largest relative difference per variable);
- for reference, without statistics: the workbench capture with a no-op `fn` (the cost of materialising the
  attention pattern), TransformerLens `run_with_cache` alone, and `model.hidden_states(ids)`, the bare
  forward without the unembedding: the overhead is given against both bare passes.
One untimed warm-up batch per variant; then each rep runs every variant in turn over all batches (so load
from other processes falls on all alike), and the median time per variant is reported as tokens/s. Overhead
= workbench time / bare time - 1 (target <= +15%); speed-up vs TransformerLens = TL time / workbench time
(target >= 1.5x).

Part (b), `weights`: a random-init float32 `LlamaForCausalLM` state dict (sizes as in benchmarks/store.py),
nudged by seeded noise per step, written as `--steps` checkpoints of one run. Then the same statistics of
every 2-D parameter at every step (`workbench.analyses.weights.matrix_statistics`) are computed
- by a plain loop: `run.checkpoint(s).state_dict()` per step, the first and previous checkpoints kept in
  memory, one process with torch on every core;
- by `analyze(run, ["weights"], workers=N)` for N = 0 (in this process, no Dask), 1 and 2: "cold" starts
  its own LocalCluster (start-up included), "warm" attaches to an already started one of N worker
  processes (`executors.local_cluster(N)`, `scheduler=ADDRESS`), so the difference is the cluster start-up.
Every engine run recomputes and commits all steps (`recompute=True`), so the times include writing the
results into the run; no checkpoint is cached from an earlier run. Times are medians over `--reps`, each rep
running every variant in turn; ratios are plain loop time / engine time (> 1: the engine is faster). The
engine's numbers are checked against the loop's (largest relative difference over all statistics).
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
import xarray as xr

import workbench
from workbench.analysis import analyze
from workbench.analysis.executors import local_cluster
from workbench.analyses.weights import STATISTICS, matrix_statistics

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
            # Nothing is cached from an earlier rep: each analyze call registers a fresh WorkerState (and the
            # results it commits change the run's snapshot, on which every cache is keyed).
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


# ---------------------------------------------------------------------------------------------- part (a)

A_SHAPES = {"tiny": (8, 256, 8), "25m": (8, 256, 4)}  # default batch, seq_len, batches per checkpoint
TL_HOOKS = ("hook_resid_post", "mlp.hook_pre", "attn.hook_pattern")  # activations.HOOKS without "blocks.{l}."


def llama_config(size: str, seq_len: int):
    from training.config import ModelConfig

    s = SIZES[size]
    return ModelConfig(**s, num_key_value_heads=s["num_attention_heads"], max_position_embeddings=seq_len)


def eval_batches(vocab: int, batch: int, seq_len: int, n: int) -> list:
    """`n` batches of random token ids, as `forward.batches` makes them (`first` counts tokens across them)."""
    from workbench.analysis.forward import Batch

    gen = torch.Generator().manual_seed(0)
    out, first = [], 0
    for _ in range(n):
        rows = torch.randint(0, vocab, (batch, seq_len + 1), generator=gen)
        out.append(Batch(rows[:, :-1], rows[:, 1:], "random", first))
        first += out[-1].n_tokens
    return out


def workbench_stats(model, batches: list, analysis) -> xr.Dataset:
    """`Activations.compute`'s work on given batches: `Activations.update` per batch, then `dataset`."""
    layers: dict = {}
    for b in batches:
        analysis.update(layers, model, b)
    return analysis.dataset([layers[l] for l in sorted(layers)], batches)


def tl_stats(bridge, batches: list, analysis, n_layers: int) -> xr.Dataset:
    """TransformerLens collects the same activations (`run_with_cache`); the same `LayerStats` reduce them."""
    from workbench.analyses.activations import LayerStats

    names = {f"blocks.{l}.{h}" for l in range(n_layers) for h in TL_HOOKS}
    layers = {l: LayerStats(analysis.params.massive_k) for l in range(n_layers)}
    with torch.no_grad():
        for b in batches:
            _, cache = bridge.run_with_cache(b.ids, names_filter=lambda n: n in names)
            for l in range(n_layers):
                for h in TL_HOOKS:
                    layers[l].update(h, cache[f"blocks.{l}.{h}"], b.first)
            del cache
    return analysis.dataset([layers[l] for l in range(n_layers)], batches)


def max_rel_diff(a, b) -> float:
    """Largest |a - b| / max(|b|, 1e-30) over the entries of two arrays (0 where both are NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = np.abs(a - b) / np.maximum(np.abs(b), 1e-30)
    return float(np.nanmax(np.where(np.isnan(a) & np.isnan(b), 0.0, d))) if d.size else 0.0


def part_a(size: str, batch: int, seq_len: int, n_batches: int, reps: int, tmp: Path) -> None:
    from training.model import Llama, checkpoint_state
    from workbench.analysis import forward
    from workbench.analyses.activations import HOOKS, Activations

    cfg = llama_config(size, seq_len)
    torch.manual_seed(0)
    model = Llama(cfg).float().eval()
    writer = workbench.create(tmp / f"run-a-{size}", model_config=cfg.to_hf())
    writer.write_checkpoint(0, checkpoint_state(model))
    bridge = workbench.open(tmp / f"run-a-{size}").checkpoint(0).to_hooked_transformer()
    bridge_dtype = next(bridge.parameters()).dtype
    batches = eval_batches(cfg.vocab_size, batch, seq_len, n_batches)
    analysis = Activations(seq_len=seq_len, batch_size=batch)
    n_tokens = sum(b.n_tokens for b in batches)
    n_params = model.num_parameters()
    print(f"\n(a) activations: {size} in-repo Llama ({n_params / 1e6:.1f}M parameters, {cfg.num_hidden_layers} "
          f"layers, d_model {cfg.hidden_size}, {cfg.num_attention_heads} heads, d_mlp {cfg.intermediate_size}, "
          f"vocab {cfg.vocab_size}), float32 CPU; {n_batches} batches of {batch} x {seq_len} = {n_tokens} tokens "
          f"per checkpoint; TransformerLens {type(bridge).__name__} ({bridge_dtype}); {reps} reps")

    def bare(bs):
        with torch.no_grad():
            for b in bs:
                model(b.ids)

    def no_head(bs):
        with torch.no_grad():
            for b in bs:
                model.hidden_states(b.ids)

    def capture_only(bs):
        with torch.no_grad():
            for b in bs:
                forward.stream(model, b.ids, HOOKS, lambda name, x: None)

    tl_names = {f"blocks.{l}.{h}" for l in range(cfg.num_hidden_layers) for h in TL_HOOKS}

    def tl_only(bs):
        with torch.no_grad():
            for b in bs:
                bridge.run_with_cache(b.ids, names_filter=lambda n: n in tl_names)

    results: dict = {}
    runs = {
        "bare forward: model(ids)": bare,
        "workbench activations (capture + LayerStats + dataset)":
            lambda bs: results.__setitem__("workbench", workbench_stats(model, bs, analysis)),
        "TransformerLens run_with_cache + LayerStats + dataset":
            lambda bs: results.__setitem__("tl", tl_stats(bridge, bs, analysis, cfg.num_hidden_layers)),
        "  reference: workbench capture, no-op fn": capture_only,
        "  reference: TransformerLens run_with_cache only": tl_only,
        "  reference: model.hidden_states(ids), no lm_head": no_head,
    }
    for fn in runs.values():  # warm-up: one batch each, untimed
        fn(batches[:1])
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(reps):  # each rep runs every variant in turn, so that load from others falls on all alike
        for label, fn in runs.items():
            start = perf_counter()
            fn(batches)
            times[label].append(perf_counter() - start)
    med = {label: statistics.median(ts) for label, ts in times.items()}
    base = med["bare forward: model(ids)"]
    wb = med["workbench activations (capture + LayerStats + dataset)"]
    tl = med["TransformerLens run_with_cache + LayerStats + dataset"]
    print(f"{'':56} {'seconds':>8} {'tokens/s':>9} {'this/bare':>9} {'min..max s':>13}")
    for label, t in med.items():
        ts = times[label]
        print(f"{label:56} {t:8.3f} {n_tokens / t:9.0f} {t / base:9.2f} {min(ts):6.2f}..{max(ts):<6.2f}")
    print(f"activations overhead vs bare forward: {wb / base - 1:+.1%} (workbench time / bare time - 1; "
          f"target <= +15%: {'met' if wb / base - 1 <= 0.15 else 'NOT met'}); vs the bare forward without "
          f"the unembedding: {wb / med['  reference: model.hidden_states(ids), no lm_head'] - 1:+.1%}")
    print(f"activations speed-up vs TransformerLens: {tl / wb:.2f}x (TL time / workbench time; target >= 1.5x: "
          f"{'met' if tl / wb >= 1.5 else 'NOT met'})")
    lo = {label: min(ts) for label, ts in times.items()}
    lo_wb = lo["workbench activations (capture + LayerStats + dataset)"]
    print(f"on the fastest rep of each (less exposed to load from other processes): overhead "
          f"{lo_wb / lo['bare forward: model(ids)'] - 1:+.1%}, speed-up vs TransformerLens "
          f"{lo['TransformerLens run_with_cache + LayerStats + dataset'] / lo_wb:.2f}x")
    a, b = results["workbench"], results["tl"]
    diffs = {v: max_rel_diff(a[v].values, b[v].values) for v in a.data_vars}
    print("workbench vs TransformerLens statistics, max relative difference: "
          + ", ".join(f"{v} {d:.1e}" for v, d in diffs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all", choices=["a", "b", "all"], help="which part to run (default both)")
    parser.add_argument("--size", default="25m", choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=20, help="(b) checkpoints in the run")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions per measurement, median reported (default 5 for (a), 3 for (b))")
    parser.add_argument("--batch", type=int, default=None, help="(a) rows per batch (default 8)")
    parser.add_argument("--seq-len", type=int, default=None, help="(a) tokens per row (default 256)")
    parser.add_argument("--batches", type=int, default=None, help="(a) batches per checkpoint (tiny 8, 25m 4)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 4 steps, 2 batches, 1 rep")
    args = parser.parse_args()
    size, steps = ("tiny", 4) if args.quick else (args.size, args.steps)
    batch, seq_len, n_batches = A_SHAPES[size]
    batch, seq_len = args.batch or batch, args.seq_len or seq_len
    n_batches = args.batches or (2 if args.quick else n_batches)
    reps_a = args.reps or (1 if args.quick else 5)
    reps_b = args.reps or (1 if args.quick else 3)
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    print(f"{platform.machine()}, {cores} CPUs, torch {torch.__version__} "
          f"(torch.set_num_threads({cores}): {torch.get_num_threads()} threads); "
          f"load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="wb-bench-analysis-") as tmp:
        if args.part in ("a", "all"):
            part_a(size, batch, seq_len, n_batches, reps_a, Path(tmp))
        if args.part in ("b", "all"):
            part_b(size, steps, reps_b, Path(tmp))
    print(f"load average at end {os.getloadavg()[0]:.1f} (above ~{cores}: other processes "
          "competed for the CPUs)")

if __name__ == "__main__":
    main()
