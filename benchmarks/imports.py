"""Import, export and repack in bounded memory (issue 18): peak resident memory and time, against a plain script.

    .venv/bin/python benchmarks/imports.py [--layers 2,4,8] [--formats hf,torch_dist] [--reps 1]

A synthetic checkpoint at LLM-jp-13B widths (hidden 5120, MLP 13824, 40 heads, vocabulary 99,584, bfloat16,
untied embeddings; `--layers` decoder layers, random values), in two formats:
- `hf`: written by safetensors itself as an HF folder of 5 GB shards with an index;
- `torch_dist`: a Megatron-Core `torch_dist` iteration folder written by torch.distributed.checkpoint itself
  (gloo, one process): MCore names, per-layer weights stacked `[L, …]` with one chunk per layer (a ShardedTensor
  of per-layer shards, as megatron-core saves them), `common.pt` with Megatron-LM's args, `metadata.json`.
Each step runs in a child process that reports its own peak resident set (`ru_maxrss`) and its time (the
checkpoint is written by a child too: Linux counts in a child's `ru_maxrss` the pages it shares with its parent
at fork, so the parent stays small):
- import: `wb import hf FOLDER --out RUN` / `wb import megatron ROOT --out RUN`; the peer, a plain script:
  safetensors' `load_file` of every shard (torch_dist: `torch.distributed.checkpoint.load` into the global
  tensors), then `save_file` of the whole state dict into one new file (what a copying script holds: the model);
- export: `wb export hf RUN --step 0 --out DIR`;
- repack: `wb repack RUN --out RUN2 --compression lz4` (the same sharded layout, LZ4 inside the shards).
Goal (issue 18): peak ≤ 2 × the largest tensor + 500 MB, and the same at every depth; import time ≥ 1.0× the
peer's speed (ratio = peer time / import time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HIDDEN, MLP, HEADS, VOCAB = 5120, 13824, 40, 99_584
SHARD = 5 * 10**9

CHILD = """
import resource, sys, time
start = time.perf_counter()
{body}
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
WB = "from workbench.cli import app\nsys.argv = ['wb'] + {argv!r}\ntry:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code"
PEER = """from pathlib import Path
from safetensors.torch import load_file, save_file
state = {{}}
for f in sorted(Path({src!r}).glob("*.safetensors")):
    state.update(load_file(f))
save_file(state, {dst!r})"""
PEER_DCP = """import torch, torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from workbench.models.megatron import load_metadata
meta = load_metadata({src!r} + "/.metadata")
state = {{k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in meta.state_dict_metadata.items()
          if hasattr(v, "chunks")}}
dcp.load(state, checkpoint_id={src!r}, no_dist=True)
save_file(state, {dst!r})"""


def child(body: str) -> tuple[float, int]:
    """(seconds, peak resident bytes) of `body` run in a fresh Python process."""
    out = subprocess.run([sys.executable, "-c", CHILD.format(body=body)], check=True, capture_output=True, text=True)
    seconds, peak = out.stdout.split()[-2:]
    return float(seconds), int(peak)


def write_checkpoint(folder: Path, layers: int) -> None:
    """The synthetic checkpoint as sharded safetensors."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "lm_head.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for l in range(layers):
        p = f"model.layers.{l}."
        shapes.update({p + f"self_attn.{x}_proj.weight": (HIDDEN, HIDDEN) for x in "qkvo"})
        shapes.update({p + "mlp.gate_proj.weight": (MLP, HIDDEN), p + "mlp.up_proj.weight": (MLP, HIDDEN),
                       p + "mlp.down_proj.weight": (HIDDEN, MLP), p + "input_layernorm.weight": (HIDDEN,),
                       p + "post_attention_layernorm.weight": (HIDDEN,)})
    folder.mkdir(parents=True)
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        t = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
        if current and size + t.numel() * 2 > SHARD:
            shards.append(current)
            current, size = {}, 0
        current[name], size = t, size + t.numel() * 2
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
              "intermediate_size": MLP, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
              "num_hidden_layers": layers, "vocab_size": VOCAB, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))


def write_torch_dist(root: Path, layers: int) -> None:
    """The synthetic checkpoint as Megatron-Core's torch_dist `root/iter_0001000`, saved by DCP under gloo."""
    import argparse as ap
    import os

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed._shard.sharded_tensor import Shard, ShardMetadata, init_from_local_shards

    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)

    def stacked(*shape):  # one chunk per layer, as megatron-core saves per-layer weights
        shards = [Shard(rand(1, *shape), ShardMetadata([i] + [0] * len(shape), [1, *shape], "rank:0/cpu"))
                  for i in range(layers)]
        return init_from_local_shards(shards, [layers, *shape])

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29571")
    dist.init_process_group("gloo", rank=0, world_size=1)
    p = "decoder.layers."
    state = {"embedding.word_embeddings.weight": rand(VOCAB, HIDDEN), "output_layer.weight": rand(VOCAB, HIDDEN),
             "decoder.final_layernorm.weight": rand(HIDDEN),
             p + "self_attention.linear_qkv.weight": stacked(3 * HIDDEN, HIDDEN),
             p + "self_attention.linear_qkv.layer_norm_weight": stacked(HIDDEN),
             p + "self_attention.linear_proj.weight": stacked(HIDDEN, HIDDEN),
             p + "mlp.linear_fc1.weight": stacked(2 * MLP, HIDDEN), p + "mlp.linear_fc1.layer_norm_weight": stacked(HIDDEN),
             p + "mlp.linear_fc2.weight": stacked(HIDDEN, MLP)}
    folder = root / "iter_0001000"
    dcp.save(state, checkpoint_id=folder)
    dist.destroy_process_group()
    args = ap.Namespace(num_layers=layers, hidden_size=HIDDEN, ffn_hidden_size=MLP, num_attention_heads=HEADS,
                        kv_channels=HIDDEN // HEADS, group_query_attention=False, max_position_embeddings=4096,
                        seq_length=4096, norm_epsilon=1e-5, rotary_base=10000, vocab_size=VOCAB,
                        padded_vocab_size=VOCAB, untie_embeddings_and_output_weights=True, params_dtype=torch.bfloat16,
                        normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                        tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    torch.save({"args": args, "checkpoint_version": 3.0, "iteration": 1000}, folder / "common.pt")
    (folder / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                                                      "common_backend": "torch", "common_backend_version": 1}))
    (root / "latest_checkpointed_iteration.txt").write_text("1000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,4,8")
    parser.add_argument("--tmp", help="folder for the checkpoints (default: the system's temporary folder)")
    parser.add_argument("--formats", default="hf,torch_dist")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--write", nargs=3, metavar=("FORMAT", "FOLDER", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        (write_checkpoint if args.write[0] == "hf" else write_torch_dist)(Path(args.write[1]), int(args.write[2]))
        return
    rows = []
    for fmt in args.formats.split(","):
        for layers in (int(x) for x in args.layers.split(",")):
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                rows += measure(fmt, layers, Path(tmp), args.reps)
    print("\n| format | layers | checkpoint | bound (2×largest+0.5 GB) | peer s / GB | import s / GB | peer/import "
          "| export s / GB | repack s / GB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fmt, layers, total, largest, peer, imp, exp, rep_ in rows:
        bound = (2 * largest + 5 * 10**8) / 1e9
        print(f"| {fmt} | {layers} | {total / 1e9:.1f} GB | {bound:.2f} GB | {peer[0]:.1f} / {peer[1] / 1e9:.2f} | "
              f"{imp[0]:.1f} / {imp[1] / 1e9:.2f} | {peer[0] / imp[0]:.2f} | {exp[0]:.1f} / {exp[1] / 1e9:.2f} | "
              f"{rep_[0]:.1f} / {rep_[1] / 1e9:.2f} |")


def measure(fmt: str, layers: int, tmp: Path, reps: int) -> list[tuple]:
    """`reps` rows of (format, layers, checkpoint bytes, largest tensor bytes, peer, import, export, repack)."""
    src = tmp / "src"
    folder = src / "step0" if fmt == "hf" else src / "iter_0001000"
    subprocess.run([sys.executable, __file__, "--write", fmt, str(folder if fmt == "hf" else src), str(layers)],
                   check=True)
    largest = VOCAB * HIDDEN * 2  # the embeddings, bfloat16
    total = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".distcp"))
    peer_script = PEER if fmt == "hf" else PEER_DCP
    importer = ["import", "hf", str(src)] if fmt == "hf" else ["import", "megatron", str(src)]
    rows = []
    for _ in range(reps):
        peer = child(peer_script.format(src=str(folder), dst=str(tmp / "copy.safetensors")))
        (tmp / "copy.safetensors").unlink()
        imp = child(WB.format(argv=importer + ["--out", str(tmp / "run")]))
        exp = child(WB.format(argv=["export", "hf", str(tmp / "run"), "--step", "0" if fmt == "hf" else "1000",
                                    "--out", str(tmp / "out")]))
        rep_ = child(WB.format(argv=["repack", str(tmp / "run"), "--out", str(tmp / "run2"), "--compression", "lz4"]))
        for path in ("run", "out", "run2"):
            shutil.rmtree(tmp / path)
        rows.append((fmt, layers, total, largest, peer, imp, exp, rep_))
        print(f"{fmt} {layers} layers ({total / 1e9:.1f} GB): peer {peer[0]:.1f} s {peer[1] / 1e9:.2f} GB; import "
              f"{imp[0]:.1f} s {imp[1] / 1e9:.2f} GB; export {exp[0]:.1f} s {exp[1] / 1e9:.2f} GB; repack "
              f"{rep_[0]:.1f} s {rep_[1] / 1e9:.2f} GB", flush=True)
    return rows


if __name__ == "__main__":
    main()
