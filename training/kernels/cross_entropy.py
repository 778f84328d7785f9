"""Fused linear + cross-entropy (Liger-kernel style): the loss of `x @ weight.T` without the [N, vocab]
logits ever existing whole.

Rows of x are processed in chunks of `chunk_size` rows (by default as many as fit
`DEFAULT_LOGITS_BYTES` of float32 logits). Per chunk:

1. logits = x_chunk @ weight.T, float32 output (cuBLAS);                           # [chunk, vocab]
2. a Triton kernel, one program per row, computes the loss with an online softmax (running max and
   sum of exponentials over vocab blocks) and overwrites the logits with d loss / d logits;
3. grad_x[chunk] = dlogits @ weight, and grad_weight += dlogits.T @ x_chunk (float32 accumulator).

For reduction "mean" / "sum" the gradients are computed in the forward, already scaled by
1 / (non-ignored tokens) or 1, and the backward only multiplies them by the incoming scalar gradient
(so a forward without backward costs the three GEMMs; without autograd only the first runs). For
"none", whose gradient depends on a per-token grad_output, the backward runs the chunk loop again
with the per-token scale.

Precision: the logits are always float32 and the softmax runs in float32. With float32 operands
everything is float32. When x and weight are both fp16/bf16 on CUDA, the GEMMs take half-precision
operands and write float32 outputs (`torch.mm(..., out_dtype=torch.float32)`, exact products and
float32 accumulation), and the gradient GEMMs use dlogits rounded to that half dtype, as autocast
would. Elsewhere (CPU, mixed dtypes, a torch without float32-output GEMMs) operands are upcast.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import num_warps

DEFAULT_LOGITS_BYTES = 256 * 2**20  # float32 logits of one chunk: chunk_size * vocab * 4 bytes
MAX_BLOCK_V = 16384  # vocab entries one program handles per loop step


@triton.jit
def _cross_entropy_kernel(
    logits_ptr,  # [chunk, vocab] float32, contiguous; overwritten with d loss / d logits
    target_ptr,  # [chunk] integer token ids
    loss_ptr,  # [chunk] float32
    scale_ptr,  # [] or [chunk] float32: d output / d (loss of this row)
    vocab,
    ignore_index,
    SCALE_PER_ROW: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * vocab
    target = tl.load(target_ptr + row).to(tl.int64)
    valid = target != ignore_index
    cols = tl.arange(0, BLOCK_V)  # [BLOCK_V]

    # Pass 1: online log-sum-exp over vocab blocks (running max m, running sum of exp(z - m)).
    m = float("-inf")
    s = 0.0
    for start in range(0, vocab, BLOCK_V):
        z = tl.load(row_ptr + start + cols, mask=start + cols < vocab, other=float("-inf"))  # [BLOCK_V]
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    z_target = tl.load(row_ptr + target, mask=valid, other=0.0)
    tl.store(loss_ptr + row, tl.where(valid, lse - z_target, 0.0))

    # Pass 2: d loss / d logits = (softmax - onehot(target)) * scale, written over the logits.
    if COMPUTE_GRAD:
        if SCALE_PER_ROW:
            scale = tl.load(scale_ptr + row)
        else:
            scale = tl.load(scale_ptr)
        scale = tl.where(valid, scale, 0.0)
        for start in range(0, vocab, BLOCK_V):
            idx = start + cols  # [BLOCK_V]
            mask = idx < vocab
            z = tl.load(row_ptr + idx, mask=mask, other=float("-inf"))
            grad = (tl.exp(z - lse) - tl.where(idx == target, 1.0, 0.0)) * scale
            tl.store(row_ptr + idx, grad, mask=mask)


# --- GEMMs with float32 outputs -------------------------------------------------------------------


@functools.cache
def _float_output_gemms(device: torch.device, dtype: torch.dtype) -> tuple[bool, bool]:
    """(mm, addmm): whether GEMMs of `dtype` operands can write float32 outputs on `device`."""
    if device.type != "cuda":
        return False, False
    a = torch.ones((8, 8), dtype=dtype, device=device)
    try:
        out = torch.empty((8, 8), dtype=torch.float32, device=device)
        torch.mm(a, a, out_dtype=torch.float32, out=out)
        mm_ok = bool((out == 8).all())
    except (RuntimeError, TypeError):
        return False, False
    try:
        acc = torch.ones((8, 8), dtype=torch.float32, device=device)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        addmm_ok = bool((acc == 9).all())
    except (RuntimeError, TypeError):
        addmm_ok = False
    return mm_ok, addmm_ok


def _gemm_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """Operand dtype of the GEMMs: x's half dtype where float32-output GEMMs exist, else float32."""
    if x.dtype == weight.dtype and x.dtype in (torch.float16, torch.bfloat16):
        if _float_output_gemms(x.device, x.dtype)[0]:
            return x.dtype
    return torch.float32


def _mm_f32(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a @ b as float32 (a, b of one dtype)."""
    if a.dtype == torch.float32:
        return torch.mm(a, b, out=out)
    return torch.mm(a, b, out_dtype=torch.float32, out=out)


def _addmm_f32_(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc += a @ b, acc float32."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    elif _float_output_gemms(a.device, a.dtype)[1]:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.add_(_mm_f32(a, b))


# --- the chunk loop -------------------------------------------------------------------------------


def default_chunk_size(n_rows: int, vocab: int, logits_bytes: int = DEFAULT_LOGITS_BYTES) -> int:
    """Rows per chunk so that one chunk of float32 logits stays within `logits_bytes`."""
    return max(1, min(n_rows, logits_bytes // (4 * vocab)))


def _loss_and_grads(
    x: Tensor,  # [N, d_model]
    weight: Tensor,  # [vocab, d_model]
    target: Tensor,  # [N]
    ignore_index: int,
    scale: Tensor | None,  # [] or [N] float32: d output / d per-token loss; None: no gradients
    chunk_size: int | None,
    need_dx: bool,
    need_dw: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-token losses [N] (float32), and the scaled gradients w.r.t. x and weight where asked."""
    n_rows, d_model = x.shape
    vocab = weight.shape[0]
    compute_grad = scale is not None and (need_dx or need_dw)
    gemm_dtype = _gemm_dtype(x, weight)
    x_g, w_g = x.to(gemm_dtype), weight.to(gemm_dtype)  # no copies when already in gemm_dtype
    chunk = default_chunk_size(n_rows, vocab) if chunk_size is None else max(1, min(n_rows, chunk_size))
    block_v = min(triton.next_power_of_2(vocab), MAX_BLOCK_V)

    loss = torch.empty(n_rows, dtype=torch.float32, device=x.device)  # [N]
    logits_buf = torch.empty((chunk, vocab), dtype=torch.float32, device=x.device)  # [chunk, vocab]
    dx = torch.empty_like(x) if compute_grad and need_dx else None  # [N, d_model]
    dw = torch.zeros((vocab, d_model), dtype=torch.float32, device=x.device) if compute_grad and need_dw else None
    if scale is None:
        scale = torch.zeros((), dtype=torch.float32, device=x.device)  # unused: COMPUTE_GRAD is off
    per_row = scale.dim() == 1  # one scale per token ("none") or one for all (0-dim)

    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, n_rows, chunk):
            end = min(start + chunk, n_rows)
            x_c = x_g[start:end]  # [rows, d_model]
            logits = logits_buf[: end - start]  # [rows, vocab]
            _mm_f32(x_c, w_g.T, out=logits)
            _cross_entropy_kernel[(end - start,)](
                logits, target[start:end], loss[start:end], scale[start:end] if per_row else scale,
                vocab, ignore_index,
                SCALE_PER_ROW=per_row, COMPUTE_GRAD=compute_grad, BLOCK_V=block_v, num_warps=num_warps(block_v),
            )
            if not compute_grad:
                continue
            dlogits = logits.to(gemm_dtype)  # [rows, vocab]
            if dx is not None:
                dx_c = dx[start:end]  # [rows, d_model]
                if dx_c.dtype == torch.float32 and dx_c.is_contiguous():
                    _mm_f32(dlogits, w_g, out=dx_c)
                else:
                    dx_c.copy_(_mm_f32(dlogits, w_g))
            if dw is not None:
                _addmm_f32_(dw, dlogits.T, x_c)  # [vocab, d_model]
    return loss, dx, None if dw is None else dw.to(weight.dtype)


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, target, ignore_index: int, reduction: str, chunk_size: int | None):
        ctx.reduction, ctx.ignore_index, ctx.chunk_size = reduction, ignore_index, chunk_size
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if reduction == "none":
            loss, _, _ = _loss_and_grads(x, weight, target, ignore_index, None, chunk_size, False, False)
            ctx.save_for_backward(x, weight, target)
            return loss
        if reduction == "mean":
            n_valid = (target != ignore_index).sum().to(torch.float32)  # stays on the device: no sync
            scale = 1.0 / n_valid  # []
        else:
            n_valid = None
            scale = torch.ones((), dtype=torch.float32, device=x.device)
        loss, dx, dw = _loss_and_grads(x, weight, target, ignore_index, scale, chunk_size, need_dx, need_dw)
        ctx.save_for_backward(dx, dw)
        return loss.sum() if n_valid is None else loss.sum() / n_valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):
        if ctx.reduction == "none":
            x, weight, target = ctx.saved_tensors
            scale = grad_loss.to(torch.float32).contiguous()  # [N]
            _, dx, dw = _loss_and_grads(
                x, weight, target, ctx.ignore_index, scale, ctx.chunk_size,
                ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            )
        else:
            dx, dw = ctx.saved_tensors
            dx = None if dx is None else dx * grad_loss.to(dx.dtype)
            dw = None if dw is None else dw * grad_loss.to(dw.dtype)
        return dx, dw, None, None, None, None


def linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    target: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Fused `F.cross_entropy(x @ weight.T, target)`; same contract as `reference.linear_cross_entropy`.

    x: [N, d_model], weight: [vocab, d_model], target: [N] (`ignore_index` marks tokens without loss).
    reduction "mean" (over non-ignored tokens), "sum" or "none" ([N], 0 at ignored tokens); the loss is
    float32. `chunk_size`: rows per chunk (default: `default_chunk_size`, a DEFAULT_LOGITS_BYTES budget).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1] or target.shape != (x.shape[0],):
        raise ValueError(
            f"expected x [N, d], weight [vocab, d], target [N]; got {tuple(x.shape)}, {tuple(weight.shape)}, "
            f"{tuple(target.shape)}"
        )
    target = target.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return LinearCrossEntropyFunction.apply(x, weight, target, int(ignore_index), reduction, chunk_size)
    loss, _, _ = _loss_and_grads(x, weight, target, int(ignore_index), None, chunk_size, False, False)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (target != ignore_index).sum()
