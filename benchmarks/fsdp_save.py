"""Checkpoint save of a 2-rank FSDP2 training state (issue 20): the run store against torch.distributed.checkpoint.

    .venv/bin/python benchmarks/fsdp_save.py [--hidden 512] [--layers 8] [--vocab 32000] [--nproc 2] [--reps 3]

Starts itself under torchrun (`--nproc` gloo ranks on this machine). Each rank builds the same LLaMA, shards it
with FSDP2 (`training.sharded.shard`) and takes one AdamW step, so that parameters and both moments exist as
row-sharded DTensors. Then, `--reps` times each, in alternation, timed from the first rank's start to the last
rank's end (barriers around):
- ours: every rank's host copy of its shards, then `ShardedWriter.write_checkpoint` — each tensor gathered to its
  owning rank, written into that rank's fork of one Icechunk session, merged and committed once by rank 0 (the
  trainer's own path, minus the background thread);
- the peer: `torch.distributed.checkpoint.save` of `get_model_state_dict` and `get_optimizer_state_dict` (the
  sharded state dicts of FSDP2) to a fresh folder — each rank writes its own shards, rank 0 the metadata.
Reported: median seconds of each, the ratio DCP time / ours (≥ 1: ours as fast or faster; goal ≥ 1.0), and the
bytes saved. Both write to the same local disk, uncompressed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    import workbench
    from training.distributed import join
    from training.model import Llama, ModelConfig, checkpoint_state
    from training.sharded import ShardedWriter, local, shard
    from training.trainer import optimizer_state
    from training.writer_thread import host_copy

    world = join("fsdp", torch.device("cpu"))
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=128)
    model = Llama(config)
    root = Path(args.folder)
    writer = workbench.create(root / "run", config.to_hf()) if world.main else None
    if world.main:
        writer.write_checkpoint(0, checkpoint_state(model))
    model = shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, args.vocab, (2, 65))
    model(ids[:, :-1], ids[:, 1:]).backward()
    opt.step()
    state = checkpoint_state(model)
    ours = ShardedWriter(writer, world, {n: t.shape for n, t in state.items()}, {n: t.dtype for n, t in state.items()})

    def save_ours(step: int) -> None:
        params = host_copy({k: local(v) for k, v in checkpoint_state(model).items()})
        moments = {k: host_copy({s: local(t) for s, t in v.items()}) for k, v in optimizer_state(model, opt).items()}
        ours.write_checkpoint(step, params, moments)

    def save_dcp(step: int) -> None:
        dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
                 checkpoint_id=str(root / f"dcp{step}"))

    def timed(save, step: int) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        save(step)
        dist.barrier()
        return time.perf_counter() - t0

    save_ours(1)  # the optimizer arrays are created by the first save with optimizer state: not timed
    times = {"ours": [], "dcp": []}
    for rep in range(args.reps):
        times["ours"].append(timed(save_ours, 2 + rep))
        times["dcp"].append(timed(save_dcp, 2 + rep))
    if world.main:
        nbytes = sum(f.stat().st_size for f in (root / "dcp2").iterdir())
        a, b = statistics.median(times["ours"]), statistics.median(times["dcp"])
        print(f"| {args.layers}×{args.hidden}, vocab {args.vocab}, {world.size} ranks | {nbytes / 1e6:,.0f} MB | "
              f"{a:.2f} s ({', '.join(f'{t:.2f}' for t in times['ours'])}) | "
              f"{b:.2f} s ({', '.join(f'{t:.2f}' for t in times['dcp'])}) | {b / a:.2f} |", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "RANK" in os.environ:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        print("| model | DCP checkpoint | ours: median (each) | DCP: median (each) | DCP / ours (time) |\n"
              "|---|---:|---:|---:|---:|", flush=True)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                        str(args.nproc), __file__, *sys.argv[1:], "--folder", tmp], check=True,
                       env={**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
                            "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


if __name__ == "__main__":
    main()
