"""Training across processes (issue 20): step time of N ranks (DDP or FSDP2) against one process.

    .venv/bin/python benchmarks/train_dist.py [--steps 30] [--hidden 256] [--layers 4] [--batch 16] [--seq-len 128]
        [--nproc 2] [--parallel ddp|fsdp] [--device cpu|cuda] [--preset 350m] [--peak-tflops 989]

The same `wb train` command (a LLaMA of `--layers` × `--hidden`, or `--preset`; synthetic corpus, global batch
`--batch` × `--seq-len`, a checkpoint only at the last step) runs in one process and under torchrun with `--nproc`
ranks (gloo on CPU, NCCL on CUDA: one GPU each; each rank its share of the global batch). Reported: the median
step time over the steps after the first five (the run's own `step_time_s` metric) and the tokens per second it
gives; the ratio one-process time / N-rank time (> 1: the ranks are faster); on CUDA the MFU of each (6 × parameters
× tokens/s over `--peak-tflops` per GPU); and the largest relative difference of the two runs' losses.
`benchmarks/gpu.sh` runs it on 2 and 8 GPUs when the machine has them; the checkpoint save of FSDP2 against
torch.distributed.checkpoint is `benchmarks/fsdp_save.py`.
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


def train(folder: Path, nproc: int | None, args) -> tuple["object", int]:
    """The metrics and parameter count of a `wb train` of the benchmark config, in one process or under torchrun."""
    import workbench

    out = folder / f"run{nproc or 1}"
    wb = str(Path(sys.executable).parent / "wb")
    config = ["--preset", args.preset, "--max-steps", str(args.steps), "--every", str(args.steps), "--no-early"] \
        if args.preset else ["--config", str(folder / "bench.toml")]
    cmd = [wb, "train", *config, "--out", str(out), "--device", args.device]
    subprocess.run(cmd + (["--nproc", str(nproc), "--parallel", args.parallel] if nproc else []), check=True,
                   capture_output=True)
    run = workbench.open(out)
    return run.metrics(), sum(t.numel() for t in run.checkpoint(0).state_dict().values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--parallel", default="ddp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench.toml").write_text(TOML.format(hidden=args.hidden, mlp=args.hidden * 11 // 4, layers=args.layers,
                                                       seq_len=args.seq_len, batch=args.batch, steps=args.steps))
        (one, params), (many, _) = train(folder, None, args), train(folder, args.nproc, args)
    tokens = int(one["tokens"].iloc[1] - one["tokens"].iloc[0])  # per step
    t1, t2 = (float(np.median(m["step_time_s"].iloc[5:])) for m in (one, many))
    diff = float(np.max(np.abs(one["loss"].values - many["loss"].values) / np.abs(one["loss"].values)))
    mfu = "" if args.device == "cpu" else \
        " | MFU " + " / ".join(f"{6 * params * tokens / t / (n * args.peak_tflops * 1e12):.1%}"
                               for t, n in ((t1, 1), (t2, args.nproc)))
    model = args.preset or f"{args.layers}×{args.hidden}"
    print(f"| {model}, {args.device}, {args.nproc} ranks {args.parallel} | {t1 * 1e3:.0f} ms, {tokens / t1:,.0f} tok/s | "
          f"{t2 * 1e3:.0f} ms, {tokens / t2:,.0f} tok/s | {t1 / t2:.2f} | {diff:.1e}{mfu} |")


if __name__ == "__main__":
    main()
