"""Reference ops in plain PyTorch: the definitions the Triton kernels are tested against.

The model calls these on CPU (and anywhere Triton is not wanted); `training.kernels.get_ops(True)` gives
the fused Triton versions with the same signatures. Each op takes any floating dtype, computes in float32
where rounding matters and returns the input dtype, as HuggingFace LLaMA does; autograd gives the
backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """HF `LlamaRMSNorm`: normalise in float32, cast back to x's dtype, then scale by `weight`.

    x: [..., d_model], weight: [d_model]. The result has the promoted dtype of x and weight, as in HF.
    """
    x32 = x.float()  # [..., d_model]
    rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1]
    return weight * (x32 * rstd).to(x.dtype)


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding, HF `rotate_half` (non-interleaved) convention.

    x: [batch, pos, heads, head_dim]; cos, sin: [pos, head_dim // 2] (the half HF repeats with
    `cat((freqs, freqs), -1)`). Pairs (x[..., i], x[..., i + head_dim // 2]) are rotated by the angle
    of position `pos` and frequency i.
    """
    half = x.shape[-1] // 2
    x32 = x.float()
    x1, x2 = x32[..., :half], x32[..., half:]  # [batch, pos, heads, head_dim/2] each
    c = cos.float()[None, :, None, :]  # [1, pos, 1, head_dim/2]
    s = sin.float()[None, :, None, :]  # [1, pos, 1, head_dim/2]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU activation of the LLaMA MLP: silu(gate) * up, computed in float32.

    gate, up: [..., d_mlp]; the result has their promoted dtype.
    """
    out_dtype = torch.promote_types(gate.dtype, up.dtype)
    return (F.silu(gate.float()) * up.float()).to(out_dtype)


def linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    target: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Cross-entropy of the logits `x @ weight.T`, computed in float32.

    x: [N, d_model], weight: [vocab, d_model] (the unembedding), target: [N] token ids. Returns a
    float32 scalar ("mean" over the non-ignored tokens, or "sum") or, for "none", the per-token loss
    [N] with 0 at ignored tokens: exactly `F.cross_entropy` on float32 logits. The reference builds the
    full [N, vocab] logits; `chunk_size` is accepted (and ignored) so that call sites work with both
    implementations.
    """
    del chunk_size
    with torch.autocast(x.device.type, enabled=False):
        logits = x.float() @ weight.float().T  # [N, vocab]
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
