"""Run store vs safetensors: write throughput, bytes on disk, trajectory reads, whole-checkpoint reads.

    .venv/bin/python benchmarks/store.py [--sizes 25m] [--steps 100] [--reps 5] [--quick]

For each size, a random-init float32 `LlamaForCausalLM` state dict is cloned and perturbed per step (the
same perturbations for every writer) and written `--steps` times: as one workbench run in the default layout
(`workbench.create` + `RunWriter.write_checkpoint`: sharded, uncompressed), as one in the same layout with LZ4
(reported only), and as one `safetensors.torch.save_file` per step.
Then both are read back: one parameter across all steps, the `{layer}` template across all steps, and a
whole checkpoint. Times are medians over `--reps`; readers open the run / files inside the timed call.
Reads run with a cold page cache (if `/proc/sys/vm/drop_caches` is writable) and with a warm one.
Everything lives in a temporary folder (under $TMPDIR) that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Callable, Iterator

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import workbench

SIZES = {  # LlamaConfig fields; untied embeddings, MHA, head_dim 32/64
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4, vocab_size=1000),
    "25m": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8, vocab_size=32000),
    "100m": dict(hidden_size=640, intermediate_size=1728, num_hidden_layers=12, num_attention_heads=10, vocab_size=32000),
}
PROBE = "model.layers.3.self_attn.q_proj.weight"
TEMPLATE = "model.layers.{layer}.self_attn.q_proj.weight"
STEP_EVERY = 1000  # the public LLaMA-based releases keep a checkpoint every 1,000 steps


@dataclass
class Row:
    size: str
    what: str
    ours: float
    peer: float
    unit: str
    ratio: float  # oriented so that the target reads `ratio >= goal` or `ratio <= goal`
    goal: tuple[str, float] | None  # (">=" or "<=", value); None: reported only

    @property
    def met(self) -> str:
        if self.goal is None:
            return "—"
        op, value = self.goal
        return "yes" if (self.ratio >= value if op == ">=" else self.ratio <= value) else "**no**"


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache; False when not permitted (not root, container)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def median_times(fns: list[Callable[[], object]], reps: int, cold: bool) -> list[float]:
    """Median seconds of each of `fns`, called in turn within each rep so that load from other processes
    falls on all alike. Cold: page cache dropped before every call; warm: after one untimed call each."""
    if not cold:
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            if cold:
                drop_caches()
            t0 = perf_counter()
            fn()
            ts.append(perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def touch(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read one value per 4 KiB page: `load_file` maps the file lazily, so its bytes are only read on use."""
    for t in sd.values():
        t.flatten()[::1024].sum()
    return sd


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def states(base: dict[str, torch.Tensor], steps: int, seed: int = 0) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(step, state dict) per checkpoint: `base` cloned once, then nudged in place by seeded noise each step."""
    sd = {k: v.clone() for k, v in base.items()}
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for v in sd.values():
            v.add_(torch.randn(v.shape, generator=gen), alpha=1e-3)
        yield i * STEP_EVERY, sd


# Writers: `open(folder, model_config)` -> `write(step, state_dict)`.
def open_workbench(folder: Path, model_config: dict, compression: str = "none"):
    from workbench.store import Layout

    return workbench.create(folder, model_config, layout=Layout(compression=compression)).write_checkpoint


def open_safetensors(folder: Path, model_config: dict):
    folder.mkdir()
    return lambda step, sd: save_file(sd, folder / f"step-{step:08d}.safetensors")  # sorts by step


def timed_write(open_writer, folder: Path, model_config: dict, base, steps: int, label: str) -> float:
    """Seconds to create `folder` and write every step, plus the final `sync` (perturbing is not timed)."""
    drop_caches()
    t0 = perf_counter()
    write = open_writer(folder, model_config)
    total = perf_counter() - t0
    for step, sd in tqdm(states(base, steps), total=steps, desc=label, leave=False):
        t0 = perf_counter()
        write(step, sd)
        total += perf_counter() - t0
    t0 = perf_counter()
    os.sync()
    return total + perf_counter() - t0


def step_of(file: Path) -> int:
    return int(file.stem.split("-")[1])


# Readers. Each opens the run / files itself; the trajectory readers return [step, name, ...].
def wb_trajectory(run_dir: Path, name: str):
    return workbench.open(run_dir).trajectory(name).values


def wb_checkpoint(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return touch(workbench.open(run_dir).checkpoint(step).state_dict())


def st_load_file(files: list[Path], names: list[str]) -> torch.Tensor:
    out = []
    for f in files:
        sd = load_file(f)
        out.append(torch.stack([sd[n] for n in names]))
    return torch.stack(out)


def st_safe_open(files: list[Path], names: list[str]) -> torch.Tensor:
    out = []
    for f in files:
        with safe_open(f, framework="pt") as fh:
            out.append(torch.stack([fh.get_tensor(n) for n in names]))
    return torch.stack(out)


def st_checkpoint(file: Path, backend: str = "mmap") -> dict[str, torch.Tensor]:
    return touch(load_file(file, backend=backend))


def bench_writes(label: str, base, model_config: dict, steps: int, reps: int, run_dir: Path, st_dir: Path) -> list[Row]:
    """(a) Each rep writes a fresh run, a fresh LZ4 run and a fresh file set, in turn; the last default run and
    file set stay for the reads."""
    raw_mb = sum(v.nbytes for v in base.values()) * steps / 1e6
    lz4_dir = run_dir.with_name(run_dir.name + "-lz4")
    writers = {"ours": (open_workbench, run_dir), "lz4": (partial(open_workbench, compression="lz4"), lz4_dir),
               "peer": (open_safetensors, st_dir)}
    times: dict[str, list[float]] = {k: [] for k in writers}
    for rep in range(reps):
        for key, (opener, folder) in writers.items():
            if folder.exists():
                shutil.rmtree(folder)
            desc = f"{label.split()[0]} write {key} {rep + 1}/{reps}"
            times[key].append(timed_write(opener, folder, model_config, base, steps, desc))
    ours, lz4, peer = (raw_mb / statistics.median(times[k]) for k in writers)
    sizes = {k: folder_bytes(folder) / 1e6 for k, (_, folder) in writers.items()}
    shutil.rmtree(lz4_dir)
    return [Row(label, "(a) write throughput, incl. final sync", ours, peer, "MB/s", ours / peer, (">=", 1.0)),
            Row(label, "(a) bytes on disk", sizes["ours"], sizes["peer"], "MB", sizes["ours"] / sizes["peer"], None),
            Row(label, "(a) write throughput, LZ4 layout", lz4, peer, "MB/s", lz4 / peer, None),
            Row(label, "(a) bytes on disk, LZ4 layout", sizes["lz4"], sizes["peer"], "MB",
                sizes["lz4"] / sizes["peer"], None)]


def bench_reads(label: str, layers: int, reps: int, run_dir: Path, st_dir: Path, cache: str) -> list[Row]:
    """(b) one parameter and the `{layer}` template across all steps; (c) one whole checkpoint."""
    files = sorted(st_dir.glob("*.safetensors"))
    cold, rows = cache == "cold", []
    for what, name, names in (("one parameter", PROBE, [PROBE]),
                              ("{layer} template", TEMPLATE, [TEMPLATE.format(layer=i) for i in range(layers)])):
        ours, *peers = median_times([partial(wb_trajectory, run_dir, name), partial(st_load_file, files, names),
                                     partial(st_safe_open, files, names)], reps, cold)
        one_warm = what == "one parameter" and not cold
        for peer_name, peer, goal in zip(("load_file", "safe_open"), peers, (None, (">=", 1.0) if one_warm else None)):
            rows.append(Row(label, f"(b) {what}, all steps, vs {peer_name} [{cache}]",
                            ours * 1e3, peer * 1e3, "ms", peer / ours, goal))
    mid = files[len(files) // 2]
    ours, *peers = median_times([partial(wb_checkpoint, run_dir, step_of(mid)), partial(st_checkpoint, mid),
                                 partial(st_checkpoint, mid, "pread")], reps, cold)
    for peer_name, peer, goal in zip(("load_file", 'load_file(backend="pread")'), peers,
                                     (("<=", 1.2) if cold else None, None)):
        rows.append(Row(label, f"(c) whole checkpoint vs {peer_name} [{cache}]", ours * 1e3, peer * 1e3, "ms",
                        ours / peer, goal))
    return rows


def bench_size(size: str, steps: int, reps: int, tmp: Path, caches: list[str]) -> list[Row]:
    config = transformers.LlamaConfig(**SIZES[size])
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config).state_dict()
    label = f"{size} ({sum(v.numel() for v in base.values()) / 1e6:.1f}M params, {steps} steps)"
    run_dir, st_dir = tmp / f"{size}-run", tmp / f"{size}-st"
    rows = bench_writes(label, base, config.to_diff_dict(), steps, reps, run_dir, st_dir)
    del base
    check_same(run_dir, st_dir, config.num_hidden_layers)
    for cache in caches:
        rows += bench_reads(label, config.num_hidden_layers, reps, run_dir, st_dir, cache)
    shutil.rmtree(run_dir)
    shutil.rmtree(st_dir)
    return rows


def check_same(run_dir: Path, st_dir: Path, layers: int) -> None:
    """Both formats must hold the same bits, else the timings compare different work."""
    files = sorted(st_dir.glob("*.safetensors"))
    ours = torch.from_numpy(wb_trajectory(run_dir, TEMPLATE))
    if not torch.equal(ours, st_safe_open(files, [TEMPLATE.format(layer=i) for i in range(layers)])):
        raise AssertionError("workbench and safetensors disagree on the trajectory")
    ours, ref = wb_checkpoint(run_dir, step_of(files[-1])), load_file(files[-1])
    if ours.keys() != ref.keys() or not all(torch.equal(ours[k], ref[k]) for k in ref):
        raise AssertionError(f"workbench and safetensors disagree on {files[-1].name}")


def table(rows: list[Row]) -> str:
    """Markdown table. Ratio: write ours/peer, bytes ours/peer, (b) speed-up peer/ours, (c) time ours/peer."""
    lines = ["| size | measurement | workbench | peer | unit | ratio | target | met |",
             "|---|---|---:|---:|---|---:|---|---|"]
    for r in rows:
        goal = f"{r.goal[0]} {r.goal[1]:g}×" if r.goal else "report"
        lines.append(f"| {r.size} | {r.what} | {r.ours:,.1f} | {r.peer:,.1f} | {r.unit} | {r.ratio:.2f}× | {goal} | {r.met} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25m", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--steps", type=int, default=100, help="checkpoints per size")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 4 steps, 1 rep")
    args = parser.parse_args()
    sizes, steps, reps = (["tiny"], 4, 1) if args.quick else (args.sizes.split(","), args.steps, args.reps)
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    if steps < 1 or reps < 1:
        parser.error("--steps and --reps must be at least 1")

    cold_ok = drop_caches()
    caches = ["cold", "warm"] if cold_ok else ["warm"]
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, page cache "
          + ("dropped before each cold measurement" if cold_ok else "cannot be dropped: warm numbers only")
          + f"; load average at start {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="wb-bench-store-") as tmp:
        for size in sizes:
            rows += bench_size(size, steps, reps, Path(tmp), caches)
    print(table(rows))
    print(f"load average at end {os.getloadavg()[0]:.1f} (above ~2 on 2 CPUs: other processes competed for them)")


if __name__ == "__main__":
    main()
