"""Forward analyses streamed block by block from the store against the whole model (issue 19): time and peak memory.

    .venv/bin/python benchmarks/streaming.py [--layers 16] [--hidden 1024] [--tokens 2048] [--reps 1]
        [--device cpu|cuda] [--dtype float32|bfloat16|float16]

A random-init float32 LLaMA (`--layers` × `--hidden`, MLP 2.75 × hidden, 16 heads, vocabulary 32,000, untied:
1.08 GB at the defaults) is written as one checkpoint of a run on local disk, with a byte-level BPE tokenizer
trained on the evaluation texts (synthetic English sentences; `--tokens` evaluation tokens in rows of 256).
Then `analyze(run, ["loss", "activations"], workers=0)` runs in a fresh child process per mode — whole model
(`stream=False`: the model read and built once) and streamed (`stream=True`: `StreamedLlama`, one block read at a
time, the next prefetched) — and reports its time and peak resident set (`ru_maxrss` of the child, which
starts from a small parent; on CUDA also the device's peak allocation). Both store the same numbers (checked:
largest relative difference of the loss). `benchmarks/gpu.sh` runs it on CUDA in bfloat16.
Goals (issue 19): streamed ≤ 1.3× the whole-model time; streamed peak ≤ 2 blocks + activations + 500 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
import torch
from workbench.analysis import analyze
start = time.perf_counter()
analyze({run!r}, ["loss", "activations"], workers=0, progress=False, recompute=True, stream={stream},
        eval_data={eval_data!r}, params={params!r}, device={device!r}, dtype={dtype!r})
seconds = time.perf_counter() - start
import workbench
loss = workbench.open({run!r}).results("loss")["loss"].values.ravel().tolist()
gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print(json.dumps([seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, loss, gpu]))
"""
WORDS = ("the model learns a token from data at every step while the loss falls and the weights move "
         "slowly through training toward a minimum of the objective on held out text").split()


def write_run(root: Path, layers: int, hidden: int, tokens: int) -> tuple[Path, Path, int]:
    """The run (one checkpoint), the evaluation text file, and the model's float32 bytes."""
    import torch

    import workbench
    from training.data.tokenizer import train_tokenizer
    from training.model import Llama, ModelConfig, checkpoint_state

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(300)) for _ in range(max(8, tokens // 200))]
    eval_file = root / "eval.txt"
    eval_file.write_text("\n\n".join(texts))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "intermediate_size": int(2.75 * hidden), "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 16, "vocab_size": 32000, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "torch_dtype": "float32"}
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_hf(config))
    nbytes = sum(p.numel() * 4 for p in model.parameters())
    writer = workbench.create(root / "run", config, tokenizer=train_tokenizer(texts, vocab_size=2048))
    writer.write_checkpoint(0, checkpoint_state(model))
    return root / "run", eval_file, nbytes


def child(run: Path, eval_file: Path, stream: bool, tokens: int, device: str, dtype: str
          ) -> tuple[float, int, list[float], int]:
    rows = max(1, tokens // 256)
    params = {name: {"seq_len": 256, "batch_size": 8, "max_tokens": rows * 256} for name in ("loss", "activations")}
    out = subprocess.run([sys.executable, "-c", CHILD.format(run=str(run), stream=stream, eval_data=str(eval_file),
                                                             params=params, device=device, dtype=dtype)],
                         check=True, capture_output=True, text=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run, eval_file, nbytes = write_run(Path(tmp), args.layers, args.hidden, args.tokens)
        block = nbytes / args.layers  # an upper bound: the embeddings count in it
        print(f"model: {args.layers} layers x {args.hidden}, float32 {nbytes / 1e9:.2f} GB; compute {args.dtype} on "
              f"{args.device}", flush=True)
        rows = []
        for rep in range(args.reps):
            whole = child(run, eval_file, False, args.tokens, args.device, args.dtype)
            streamed = child(run, eval_file, True, args.tokens, args.device, args.dtype)
            diff = max(abs(a - b) / abs(b) for a, b in zip(streamed[2], whole[2]))
            rows.append((whole, streamed, diff))
            gpu = (f"; device peak whole {whole[3] / 1e9:.2f} GB, streamed {streamed[3] / 1e9:.2f} GB"
                   if whole[3] else "")
            print(f"rep {rep}: whole {whole[0]:.1f} s {whole[1] / 1e9:.2f} GB; streamed {streamed[0]:.1f} s "
                  f"{streamed[1] / 1e9:.2f} GB; loss rel. diff {diff:.1e}{gpu}", flush=True)
        print("\n| model | whole s / peak GB | streamed s / peak GB | streamed/whole time | bound (2 blocks + 0.5 GB + "
              "activations) | loss rel. diff |\n|---|---:|---:|---:|---:|---:|")
        for whole, streamed, diff in rows:
            print(f"| {args.layers}×{args.hidden}, {nbytes / 1e9:.2f} GB | {whole[0]:.1f} / {whole[1] / 1e9:.2f} | "
                  f"{streamed[0]:.1f} / {streamed[1] / 1e9:.2f} | {streamed[0] / whole[0]:.2f} | "
                  f"{(2 * block + 5e8) / 1e9:.2f} GB + activations | {diff:.1e} |")


if __name__ == "__main__":
    main()
