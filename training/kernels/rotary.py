"""Fused rotary position embedding (HF `rotate_half` convention), forward and backward in Triton.

    out[..., :h] = x1 * cos - x2 * sin,   out[..., h:] = x2 * cos + x1 * sin,   h = head_dim / 2

One program per (batch, position) rotates all heads of that position. The backward is the same
rotation by -sin (a rotation's inverse is its transpose). cos and sin get no gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import num_warps


@triton.jit
def _rotary_kernel(
    x_ptr,  # [batch, pos, heads, head_dim], unit stride along head_dim
    cos_ptr,  # [pos, head_dim/2], contiguous
    sin_ptr,  # [pos, head_dim/2], contiguous
    out_ptr,  # [batch, pos, heads, head_dim], contiguous
    n_pos,
    n_heads,
    half,
    x_stride_batch,
    x_stride_pos,
    x_stride_head,
    BACKWARD: tl.constexpr,  # rotate by -sin
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # flat (batch, pos) index
    b = row // n_pos
    p = row % n_pos
    heads = tl.arange(0, BLOCK_H)[:, None]  # [BLOCK_H, 1]
    cols = tl.arange(0, BLOCK_HALF)[None, :]  # [1, BLOCK_HALF]
    mask = (heads < n_heads) & (cols < half)  # [BLOCK_H, BLOCK_HALF]

    cos = tl.load(cos_ptr + p * half + cols, mask=cols < half, other=0.0).to(tl.float32)  # [1, BLOCK_HALF]
    sin = tl.load(sin_ptr + p * half + cols, mask=cols < half, other=0.0).to(tl.float32)  # [1, BLOCK_HALF]
    if BACKWARD:
        sin = -sin

    x_row = x_ptr + b * x_stride_batch + p * x_stride_pos + heads * x_stride_head  # [BLOCK_H, 1]
    x1 = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_H, BLOCK_HALF]
    x2 = tl.load(x_row + half + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_H, BLOCK_HALF]

    out_row = out_ptr + row * n_heads * 2 * half + heads * 2 * half  # [BLOCK_H, 1]
    dtype = out_ptr.dtype.element_ty
    tl.store(out_row + cols, (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(out_row + half + cols, (x2 * cos + x1 * sin).to(dtype), mask=mask)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, backward: bool) -> Tensor:
    batch, n_pos, n_heads, head_dim = x.shape
    half = head_dim // 2
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((batch, n_pos, n_heads, head_dim), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_h, block_half = triton.next_power_of_2(n_heads), triton.next_power_of_2(half)
    _rotary_kernel[(batch * n_pos,)](
        x, cos, sin, out, n_pos, n_heads, half, x.stride(0), x.stride(1), x.stride(2),
        BACKWARD=backward, BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=num_warps(block_h * block_half),
    )
    return out


class RotaryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, backward=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad_out, cos, sin, backward=True), None, None


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Fused rotary embedding; same contract as `reference.rotary`.

    x: [batch, pos, heads, head_dim] (any strides, e.g. a view of a fused qkv projection);
    cos, sin: [pos, head_dim // 2]. Returns a new contiguous tensor of x's dtype.
    """
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(f"x must be [batch, pos, heads, head_dim] with an even head_dim, got {tuple(x.shape)}")
    expected = (x.shape[1], x.shape[-1] // 2)
    if cos.shape != expected or sin.shape != expected:
        raise ValueError(f"cos and sin must be [pos, head_dim/2] = {expected}, got {tuple(cos.shape)}, {tuple(sin.shape)}")
    return RotaryFunction.apply(x, cos.contiguous(), sin.contiguous())
