"""Partial reads at LLM-jp-13B widths: one head and one MLP neuron across all checkpoints, from the sharded layout,
from whole-tensor chunks (format 1) and from per-step safetensors files (`safe_open` slices).

    .venv/bin/python benchmarks/scale.py [--steps 8] [--layers 2] [--reps 3]
    .venv/bin/python benchmarks/scale.py --plan     # the tables of docs/SCALE.md, computed from the configs

The model has LLM-jp-13B's widths (hidden 5120, MLP 13824, 40 heads of 128) and `--layers` layers of attention and
MLP (no embeddings: they would only add bytes nobody reads here), bfloat16, random, one seeded perturbation per
checkpoint. Each format holds the same bits (checked). Measured per read, medians of `--reps`:
- time with a cold page cache (dropped before each call, when permitted) and a warm one, the open included;
- bytes asked for (the values returned), bytes the Icechunk store returned (workbench formats), and bytes the
  process read from disk on the cold call (`/proc/self/io` read_bytes: page-cache misses, readahead included).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import torch

from store import drop_caches  # benchmarks/store.py, beside this script

LLM_JP = {  # HF config fields of the public checkpoints (vocab padded as in their config.json)
    "LLM-jp-3 13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                         num_key_value_heads=40, vocab_size=99584),
    "LLM-jp-3 172B": dict(hidden_size=12288, intermediate_size=38464, num_hidden_layers=96, num_attention_heads=96,
                          num_key_value_heads=16, vocab_size=99584),
}
CHECKPOINTS = 293  # LLM-jp-3 172B's public checkpoints (about one per 1,000 steps)
LAYER, HEAD, NEURON = 1, 7, 1000


def tensors(cfg: dict, layers: int) -> dict[str, tuple[int, ...]]:
    """Shapes of a LLaMA's attention and MLP matrices for `layers` layers."""
    h, m, heads, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // heads
    per_layer = {"self_attn.q_proj": (heads * d, h), "self_attn.k_proj": (kv * d, h), "self_attn.v_proj": (kv * d, h),
                 "self_attn.o_proj": (h, heads * d), "mlp.gate_proj": (m, h), "mlp.up_proj": (m, h),
                 "mlp.down_proj": (h, m)}
    return {f"model.layers.{i}.{k}.weight": s for i in range(layers) for k, s in per_layer.items()}


def states(cfg: dict, layers: int, steps: int):
    """(step, bf16 state dict) per checkpoint: seeded random weights nudged in place each step."""
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, s in tensors(cfg, layers).items()}
    for i in range(steps):
        for v in sd.values():
            v.add_((torch.randn(v.shape, generator=gen) * 1e-3).to(torch.bfloat16))
        yield i * 1000, sd


def write_all(root: Path, cfg: dict, layers: int, steps: int) -> tuple[dict[str, Path], list[Path]]:
    """The three formats written; and the manifest files of the sharded run written by its last commit."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from workbench import store
    from workbench.models.roles import parameter_roles

    model_config = {"model_type": "llama", "head_dim": cfg["hidden_size"] // cfg["num_attention_heads"], **cfg}
    roles = parameter_roles(model_config)
    where = {"sharded": root / "sharded", "whole tensors": root / "whole", "safetensors": root / "st"}
    writers = [store.create(where["sharded"], model_config, roles=roles),
               store.create(where["whole tensors"], model_config, layout=store.Layout(sharded=False, compression="lz4"),
                            roles=roles)]
    where["safetensors"].mkdir()
    manifests = where["sharded"] / "manifests"
    for i, (step, sd) in enumerate(tqdm(states(cfg, layers, steps), total=steps, desc="write", leave=False)):
        if i == steps - 1:
            earlier = set(manifests.iterdir())
        for w in writers:
            w.write_checkpoint(step, sd)
        save_file(sd, where["safetensors"] / f"step-{step:08d}.safetensors")
    os.sync()
    return where, sorted(set(manifests.iterdir()) - earlier)


# Readers: each opens the run or files itself and returns the values asked for, [step, ...].
def head_name(layer: int = LAYER) -> str:
    return f"model.layers.{layer}.self_attn.q_proj.weight"


def wb_head(path: Path, width: int):
    import workbench

    return workbench.open(path).head(LAYER, HEAD, "q").values


def wb_neuron(path: Path, width: int):
    import workbench

    return workbench.open(path).neuron(LAYER, NEURON).values


def st_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def st_head(path: Path, width: int):
    from safetensors import safe_open

    out = []
    for f in st_files(path):
        with safe_open(f, framework="pt") as fh:
            out.append(fh.get_slice(head_name())[HEAD * width:(HEAD + 1) * width])
    return torch.stack(out).float().numpy()


def st_neuron(path: Path, width: int):
    from safetensors import safe_open

    out = []
    for f in st_files(path):
        with safe_open(f, framework="pt") as fh:
            name = f"model.layers.{LAYER}.mlp.{{}}_proj.weight"
            out.append(torch.stack([fh.get_slice(name.format("gate"))[NEURON], fh.get_slice(name.format("up"))[NEURON],
                                    fh.get_slice(name.format("down"))[:, NEURON]]))
    return torch.stack(out).float().numpy()


def disk_reads() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


class StoreBytes:
    """Bytes the Icechunk store returns for chunk keys (shards, index reads, inner chunks)."""

    def __enter__(self):
        import icechunk

        self.total, self.requests, self.get = 0, 0, icechunk.IcechunkStore.get
        counter = self

        async def counting(store, key, prototype, byte_range=None):
            buf = await counter.get(store, key, prototype, byte_range)
            if "/c/" in key and buf is not None:
                counter.total += len(buf)
                counter.requests += 1
            return buf

        icechunk.IcechunkStore.get = counting
        return self

    def __exit__(self, *exc):
        import icechunk

        icechunk.IcechunkStore.get = self.get


@dataclass
class Measure:
    read: str
    fmt: str
    cold_ms: float | None
    warm_ms: float
    asked: int
    store_bytes: int | None
    disk_bytes: int | None
    requests: int | None


def measure(read: str, fmt: str, fn, path: Path, width: int, reps: int, cold_ok: bool) -> Measure:
    values = fn(path, width)
    asked = values.size * 2  # bf16 values
    with StoreBytes() as counted:
        fn(path, width)
    store_bytes = counted.total if fmt != "safetensors" else None
    requests = counted.requests if fmt != "safetensors" else None
    cold, disk = [], None
    if cold_ok:
        for _ in range(reps):
            drop_caches()
            before, t0 = disk_reads(), perf_counter()
            fn(path, width)
            cold.append(perf_counter() - t0)
            disk = disk_reads() - before
    warm = []
    for _ in range(reps):
        t0 = perf_counter()
        fn(path, width)
        warm.append(perf_counter() - t0)
    return Measure(read, fmt, statistics.median(cold) * 1e3 if cold else None, statistics.median(warm) * 1e3, asked,
                   store_bytes, disk, requests)


def mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:,.2f}"


def bench(args) -> None:
    cfg = LLM_JP["LLM-jp-3 13B"]
    width = cfg["hidden_size"] // cfg["num_attention_heads"]
    cold_ok = drop_caches()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; LLM-jp-3 13B widths, "
          f"{args.layers} layers × {args.steps} checkpoints, bf16; page cache "
          + ("dropped before each cold call" if cold_ok else "not droppable: warm only")
          + f"; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="wb-bench-scale-") as tmp:
        where, last_manifests = write_all(Path(tmp), cfg, args.layers, args.steps)
        readers = {"one head of q_proj": {"sharded": wb_head, "whole tensors": wb_head, "safetensors": st_head},
                   "one MLP neuron (gate, up, down)": {"sharded": wb_neuron, "whole tensors": wb_neuron,
                                                       "safetensors": st_neuron}}
        rows = []
        for read, fns in readers.items():
            results = {fmt: fn(where[fmt], width) for fmt, fn in fns.items()}
            if not all(np.array_equal(results["safetensors"], r) for r in results.values()):
                raise AssertionError(f"the formats disagree on {read}")
            rows += [measure(read, fmt, fn, where[fmt], width, args.reps, cold_ok) for fmt, fn in fns.items()]
        manifest_bytes = sum(p.stat().st_size for p in last_manifests)
    print("| read | format | cold ms | warm ms | asked MB | store returned MB (× asked) | disk read, cold MB | requests |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f" ({r.store_bytes / r.asked:.2f}×)" if r.store_bytes else ""
        cold = "—" if r.cold_ms is None else f"{r.cold_ms:,.1f}"
        print(f"| {r.read} | {r.fmt} | {cold} | {r.warm_ms:,.1f} | {mb(r.asked)} | {mb(r.store_bytes)}{ratio} | "
              f"{mb(r.disk_bytes)} | {r.requests if r.requests is not None else '—'} |")
    shards = 7 * args.layers * args.steps
    print(f"manifests of the sharded run's last snapshot: {len(last_manifests)} files, {manifest_bytes:,} bytes for "
          f"{shards} shard references and the step coordinate ({manifest_bytes / shards:.0f} bytes per reference)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


def plan() -> None:
    """docs/SCALE.md's tables, from the configs and the layout rules."""
    from workbench.models.roles import parameter_roles
    from workbench.store.layout import inner_chunks, role_cuts
    from workbench.store.shards import index_size

    for name, cfg in LLM_JP.items():
        width = cfg["hidden_size"] // cfg["num_attention_heads"]
        cuts = role_cuts(parameter_roles({"model_type": "llama", **cfg}))
        layers = cfg["num_hidden_layers"]
        shapes = {k.replace("model.layers.0.", "model.layers.{layer}."): s for k, s in tensors(cfg, 1).items()}
        shapes["model.embed_tokens.weight"] = shapes["lm_head.weight"] = (cfg["vocab_size"], cfg["hidden_size"])
        norms = (2 * layers + 1) * cfg["hidden_size"] * 2
        total = sum(math.prod(s) * 2 * (layers if "{layer}" in k else 1) for k, s in shapes.items()) + norms
        print(f"\n### {name}: {total / 1e9:,.1f} GB per bf16 checkpoint, {CHECKPOINTS} checkpoints: "
              f"{total * CHECKPOINTS / 1e12:,.1f} TB\n")
        print("| array | tensor | bytes per tensor | shards per checkpoint | inner chunk | inner chunks per shard | "
              "bytes per inner chunk | shard index |")
        print("|---|---|---:|---:|---|---:|---:|---:|")
        for k, s in shapes.items():
            inner = inner_chunks(s, cuts.get(k))
            n = math.prod(a // b for a, b in zip(s, inner))
            print(f"| `{k.split('.')[-2] if '{layer}' in k else k}` | {list(s)} | {mb(math.prod(s) * 2)} MB | "
                  f"{layers if '{layer}' in k else 1} | {list(inner)} | {n} | {mb(math.prod(inner) * 2)} MB | "
                  f"{index_size(s, inner):,} B |")
        q = shapes["model.layers.{layer}.self_attn.q_proj.weight"]
        mlp = shapes["model.layers.{layer}.mlp.up_proj.weight"]
        head_bytes = width * q[1] * 2 + 4 + index_size(q, (width, q[1]))
        block = inner_chunks(mlp, cuts["model.layers.{layer}.mlp.up_proj.weight"])[0]
        neuron_bytes = 3 * (block * mlp[1] * 2 + 4 + index_size(mlp, (block, mlp[1])))
        layer_bytes = sum(math.prod(s) * 2 for k, s in shapes.items() if "{layer}" in k) + 2 * cfg["hidden_size"] * 2
        print(f"\nAcross all {CHECKPOINTS} checkpoints: one head of q_proj reads {mb(head_bytes * CHECKPOINTS)} MB in "
              f"{2 * CHECKPOINTS} requests (whole tensors: {mb(math.prod(q) * 2 * CHECKPOINTS)} MB); one MLP neuron "
              f"reads {mb(neuron_bytes * CHECKPOINTS)} MB in {6 * CHECKPOINTS} requests, for "
              f"{mb(3 * mlp[1] * 2 * CHECKPOINTS)} MB of values (whole tensors: {mb(3 * math.prod(mlp) * 2 * CHECKPOINTS)} MB); "
              f"one layer reads {mb(layer_bytes * CHECKPOINTS)} MB in {9 * CHECKPOINTS} requests.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--plan", action="store_true", help="print docs/SCALE.md's tables and exit")
    args = parser.parse_args()
    if args.plan:
        plan()
        return
    if min(args.steps, args.layers, args.reps) < 1 or args.layers <= LAYER:
        parser.error(f"--steps and --reps must be at least 1, --layers at least {LAYER + 1}")
    bench(args)


if __name__ == "__main__":
    main()
