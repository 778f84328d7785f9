"""Training across processes (issue 20): step time of DDP on 2 ranks against one process, on this machine's CPUs.

    .venv/bin/python benchmarks/train_dist.py [--steps 30] [--hidden 256] [--layers 4] [--batch 16] [--seq-len 128]

The same `wb train` command (a LLaMA of `--layers` × `--hidden`, synthetic corpus, global batch `--batch` ×
`--seq-len`, a checkpoint only at the last step) runs in one process (torch on every core) and under torchrun with
2 gloo ranks (`--nproc 2`: DDP, each rank its half of the global batch, one thread each as torchrun sets it).
Reported: the median step time over the steps after the first five (the run's own `step_time_s` metric) and the
tokens per second it gives; the ratio one-process time / 2-rank time (> 1: the ranks are faster), and the
largest relative difference of the two runs' losses. Not yet measured (issue 20): the FSDP checkpoint save against
torch.distributed.checkpoint, and the multi-GPU runs (benchmarks/gpu.sh).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TOML = """
[model]
vocab_size = 4096
hidden_size = {hidden}
intermediate_size = {mlp}
num_hidden_layers = {layers}
num_attention_heads = 4
num_key_value_heads = 4
max_position_embeddings = {seq_len}

[train]
n_documents = 2000
seq_len = {seq_len}
batch_size = {batch}
max_steps = {steps}
every = {steps}
early = false
warmup_steps = 5
"""


def train(folder: Path, nproc: int | None) -> "object":
    """The metrics of a `wb train` of the benchmark config, in one process or under torchrun."""
    import workbench

    out = folder / f"run{nproc or 1}"
    wb = str(Path(sys.executable).parent / "wb")
    args = [wb, "train", "--config", str(folder / "bench.toml"), "--out", str(out)]
    subprocess.run(args + (["--nproc", str(nproc)] if nproc else []), check=True, capture_output=True)
    return workbench.open(out).metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench.toml").write_text(TOML.format(hidden=args.hidden, mlp=args.hidden * 11 // 4, layers=args.layers,
                                                       seq_len=args.seq_len, batch=args.batch, steps=args.steps))
        one, two = train(folder, None), train(folder, 2)
    tokens = args.batch * args.seq_len
    t1, t2 = (float(np.median(m["step_time_s"].iloc[5:])) for m in (one, two))
    diff = float(np.max(np.abs(one["loss"].values - two["loss"].values) / np.abs(one["loss"].values)))
    print(f"| {args.layers}×{args.hidden}, batch {args.batch}×{args.seq_len} | {t1 * 1e3:.0f} ms, {tokens / t1:,.0f} tok/s | "
          f"{t2 * 1e3:.0f} ms, {tokens / t2:,.0f} tok/s | {t1 / t2:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
