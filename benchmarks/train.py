"""Training-step throughput of the in-repo LLaMA vs transformers' LlamaForCausalLM, same config and batch.

A step is forward + backward + gradient clipping + AdamW, from identical initial weights. Both models are
timed alternately in the same process (A, B, A, B, ...) and the medians compared, so machine noise hits both.
On CUDA both run under bf16 autocast; ours uses the Triton kernels, and MFU and peak memory are reported; where
Liger-Kernel is installed, transformers' model with Liger's fused ops is a third variant.

    python benchmarks/train.py                        # CPU: tiny preset and a ~25M config
    python benchmarks/train.py --device cuda --sizes 125m,350m --seq-len 2048

MFU convention: model FLOPs per token = 6 * N_matmul + 12 * L * d_attn * T (PaLM, appendix B), where
N_matmul counts every weight that takes part in a matmul (embedding lookup excluded, lm_head included);
peak = 989 TFLOP/s dense bf16 for an H100 SXM (override with --peak-tflops).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.config import ModelConfig
from training.model import Llama, load_checkpoint_state
from training.presets import PRESETS

SIZES = {
    "tiny": (PRESETS["tiny"][0], 8, 64),
    "25m": (dict(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048), 4, 256),
    "125m": (PRESETS["125m"][0], 8, 2048),
    "350m": (PRESETS["350m"][0], 4, 2048),
}


def make_step(model, hf: bool, device: torch.device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(tokens):
        with autocast:
            loss = model(tokens[:, :-1], labels=tokens[:, :-1]).loss if hf else model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def liger_model(cfg: ModelConfig, hf, device: torch.device):
    """transformers' model with Liger-Kernel's fused ops patched into this instance (its RMSNorm, rotary, SwiGLU
    and fused linear cross-entropy), the same weights; None when Liger-Kernel is not installed or not on CUDA."""
    if device.type != "cuda":
        return None
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError:
        return None
    model = LlamaForCausalLM(LlamaConfig(**cfg.to_hf(), attn_implementation="sdpa")).to(device)
    model.load_state_dict(hf.state_dict())
    apply_liger_kernel_to_llama(model=model)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, device: torch.device, repeats: int, warmup: int, seq_len: int | None, peak_tflops: float):
    fields, batch, default_seq = SIZES[name]
    seq = seq_len or default_seq
    cfg = ModelConfig(**{**fields, "max_position_embeddings": max(seq, fields["max_position_embeddings"])})
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf(), attn_implementation="sdpa")).to(device)
    ours = Llama(cfg).to(device)
    load_checkpoint_state(ours, hf.state_dict())
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    steps = {"ours": make_step(ours, False, device), "hf": make_step(hf, True, device)}
    if liger := liger_model(cfg, hf, device):
        steps["liger"] = make_step(liger, True, device)
    times = {k: [] for k in steps}
    peak_mem = {}
    for k, step in steps.items():
        for _ in range(warmup):
            step(tokens)
    for _ in range(repeats):
        for k, step in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            t = time.perf_counter()
            step(tokens)
            sync(device)
            times[k].append(time.perf_counter() - t)
            if device.type == "cuda":
                peak_mem[k] = torch.cuda.max_memory_allocated() / 2**30
    n_tokens = batch * seq
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    row = {"size": name, "params": ours.num_parameters(), "batch": batch, "seq": seq,
           **{f"{k}_tok_s": v for k, v in tps.items()}, "ratio": tps["ours"] / tps["hf"]}
    if device.type == "cuda":
        flops = ours.flops_per_token(seq)
        row.update({f"{k}_mfu": tps[k] * flops / (peak_tflops * 1e12) for k in tps})
        row.update({f"{k}_peak_gib": peak_mem[k] for k in peak_mem})
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="tiny,25m")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in args.sizes.split(","):
        row = bench(name, device, args.repeats, args.warmup, args.seq_len, args.peak_tflops)
        print("  ".join(f"{k}={v:,.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
