"""The compiled Triton kernels on CUDA against the PyTorch reference computed in float32 on the same inputs:
forward and backward, float32, bfloat16 and float16, odd shapes, the chunked cross-entropy and its half-precision
GEMM path. Tolerances as Liger-Kernel's tests use them: float32 1e-5, bfloat16 and float16 relative to the
largest magnitude of the expected tensor (bf16 5e-2, fp16 1e-2)."""

from __future__ import annotations

import pytest
import torch

from training.kernels import get_ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}
CUDA = torch.device("cuda")


def close(actual, expected, dtype):
    tol = TOL[dtype]
    scale = max(expected.detach().abs().max().float().item(), 1e-6)
    torch.testing.assert_close(actual.detach().float(), expected.detach().float(), rtol=tol, atol=tol * scale)


def both(fn_name, *inputs, dtype, grad_out=None):
    """(triton output, reference output in float32, their grads) for inputs that require grad."""
    triton, reference = get_ops(True), get_ops(False)
    a = [x.detach().to(CUDA, dtype).requires_grad_(x.is_floating_point()) for x in inputs]
    r = [x.detach().to(CUDA, torch.float32).requires_grad_(x.is_floating_point()) for x in inputs]
    out_a, out_r = getattr(triton, fn_name)(*a), getattr(reference, fn_name)(*r)
    g = torch.randn_like(out_r) if grad_out is None else grad_out
    grads_a = torch.autograd.grad(out_a, [x for x in a if x.requires_grad], g.to(out_a.dtype))
    grads_r = torch.autograd.grad(out_r, [x for x in r if x.requires_grad], g)
    return out_a, out_r, grads_a, grads_r


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 64), (2, 129, 4096), (1, 1, 96)])
def test_rmsnorm(dtype, shape):
    x, w = torch.randn(shape), 1 + 0.1 * torch.randn(shape[-1])
    triton, reference = get_ops(True), get_ops(False)
    xa, wa = x.to(CUDA, dtype).requires_grad_(), w.to(CUDA, dtype).requires_grad_()
    xr, wr = x.to(CUDA).requires_grad_(), w.to(CUDA).requires_grad_()
    out_a, out_r = triton.rms_norm(xa, wa, 1e-5), reference.rms_norm(xr, wr, 1e-5)
    close(out_a, out_r, dtype)
    g = torch.randn_like(out_r)
    for ga, gr in zip(torch.autograd.grad(out_a, [xa, wa], g.to(dtype)), torch.autograd.grad(out_r, [xr, wr], g)):
        close(ga, gr, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 17, 4, 64), (1, 2048, 16, 128), (3, 5, 3, 32)])
def test_rotary(dtype, shape):
    b, t, h, d = shape
    freqs = torch.outer(torch.arange(t).float(), 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d))
    x = torch.randn(shape)
    triton, reference = get_ops(True), get_ops(False)
    xa, xr = x.to(CUDA, dtype).requires_grad_(), x.to(CUDA).requires_grad_()
    cos, sin = freqs.cos().to(CUDA), freqs.sin().to(CUDA)
    out_a, out_r = triton.rotary(xa, cos.to(dtype), sin.to(dtype)), reference.rotary(xr, cos, sin)
    close(out_a, out_r, dtype)
    g = torch.randn_like(out_r)
    close(torch.autograd.grad(out_a, xa, g.to(dtype))[0], torch.autograd.grad(out_r, xr, g)[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 176), (2, 1024, 2816), (1, 1, 33)])
def test_swiglu(dtype, shape):
    out_a, out_r, grads_a, grads_r = both("swiglu", torch.randn(shape), torch.randn(shape), dtype=dtype)
    close(out_a, out_r, dtype)
    for ga, gr in zip(grads_a, grads_r):
        close(ga, gr, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,vocab,chunk", [(37, 33, 101, 16), (4096, 1024, 32000, None), (2048, 768, 32000, 512)])
def test_linear_cross_entropy(dtype, n, d, vocab, chunk):
    x, w = torch.randn(n, d), 0.02 * torch.randn(vocab, d)
    target = torch.randint(0, vocab, (n,))
    target[:3] = -100
    triton, reference = get_ops(True), get_ops(False)
    xa, wa = x.to(CUDA, dtype).requires_grad_(), w.to(CUDA, dtype).requires_grad_()
    xr, wr = x.to(CUDA).requires_grad_(), w.to(CUDA).requires_grad_()
    t = target.to(CUDA)
    loss_a = triton.linear_cross_entropy(xa, wa, t, chunk_size=chunk)
    loss_r = reference.linear_cross_entropy(xr, wr, t)
    close(loss_a, loss_r, dtype)
    for ga, gr in zip(torch.autograd.grad(loss_a, [xa, wa]), torch.autograd.grad(loss_r, [xr, wr])):
        close(ga, gr, dtype)


def test_linear_cross_entropy_under_bf16_autocast_uses_a_half_precision_weight():
    """Under autocast the lm_head weight is float32; the loss must equal the float32 reference within bf16 tolerance."""
    x, w = torch.randn(512, 256, device=CUDA), 0.02 * torch.randn(4096, 256, device=CUDA)
    t = torch.randint(0, 4096, (512,), device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = get_ops(True).linear_cross_entropy(x.bfloat16(), w, t)
    close(loss, get_ops(False).linear_cross_entropy(x, w, t), torch.bfloat16)
