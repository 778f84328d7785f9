"""Fused RMSNorm (HF `LlamaRMSNorm` semantics), forward and backward in Triton.

    y = weight * cast(x * rstd),   rstd = 1 / sqrt(mean(x^2) + eps)   (statistics in float32)

Forward: one program per row; it saves rstd [rows] for the backward. Backward: a persistent grid of
programs, each looping over rows; every program accumulates its share of d(weight) in float32 and
the partial sums are added in PyTorch. The cast to x's dtype is treated as identity in the backward,
as autograd does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import block_size, num_programs, num_warps, rows_view


@triton.jit
def _rms_norm_fwd_kernel(
    x_ptr,  # [rows, d_model]
    w_ptr,  # [d_model]
    y_ptr,  # [rows, d_model], contiguous
    rstd_ptr,  # [rows] float32
    x_row_stride,
    d_model,
    eps,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < d_model

    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_D]
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_D]
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / d_model + eps)
    # HF rounds the normalised row to the input dtype before the weight multiplies it.
    x_hat = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + row * d_model + cols, (x_hat * w).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rms_norm_bwd_kernel(
    dy_ptr,  # [rows, d_model], contiguous
    x_ptr,  # [rows, d_model]
    w_ptr,  # [d_model]
    rstd_ptr,  # [rows] float32
    dx_ptr,  # [rows, d_model], contiguous
    dw_partial_ptr,  # [programs, d_model] float32
    x_row_stride,
    rows,
    d_model,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # int64 row offsets: rows * d_model may pass 2**31
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < d_model
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_D]
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)

    for row in range(pid, rows, n_programs):
        x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * d_model + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        x_hat = x * rstd  # [BLOCK_D]
        dw += dy * x_hat.to(x_ptr.dtype.element_ty).to(tl.float32)
        dx_hat = dy * w
        # d/dx of x * rstd(x): rstd * (dx_hat - x_hat * mean(dx_hat * x_hat))
        dx = rstd * (dx_hat - x_hat * (tl.sum(dx_hat * x_hat, axis=0) / d_model))
        tl.store(dx_ptr + row * d_model + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)

    tl.store(dw_partial_ptr + pid * d_model + cols, dw, mask=mask)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        d_model = x.shape[-1]
        x2 = rows_view(x)  # [rows, d_model]
        rows = x2.shape[0]
        out_dtype = torch.promote_types(x.dtype, weight.dtype)
        y = torch.empty((rows, d_model), dtype=out_dtype, device=x.device)  # [rows, d_model]
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)  # [rows]
        block = block_size(d_model)
        if rows > 0:
            _rms_norm_fwd_kernel[(rows,)](
                x2, weight, y, rstd, x2.stride(0), d_model, eps, BLOCK_D=block, num_warps=num_warps(block)
            )
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        x2, weight, rstd = ctx.saved_tensors
        rows, d_model = x2.shape
        dy2 = dy.reshape(rows, d_model).contiguous()  # [rows, d_model]
        dx = torch.empty((rows, d_model), dtype=x2.dtype, device=x2.device)  # [rows, d_model]
        programs = num_programs(x2.device, rows)
        dw_partial = torch.zeros((programs, d_model), dtype=torch.float32, device=x2.device)
        block = block_size(d_model)
        if rows > 0:
            _rms_norm_bwd_kernel[(programs,)](
                dy2, x2, weight, rstd, dx, dw_partial, x2.stride(0), rows, d_model,
                BLOCK_D=block, num_warps=num_warps(block),
            )
        dw = dw_partial.sum(0).to(weight.dtype)  # [d_model]
        return dx.view(ctx.x_shape), dw, None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Fused RMSNorm; same contract as `reference.rms_norm`. x: [..., d_model], weight: [d_model]."""
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight {tuple(weight.shape)} does not match the last dim of x {tuple(x.shape)}")
    return RMSNormFunction.apply(x, weight.contiguous(), float(eps))
