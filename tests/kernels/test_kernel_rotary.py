"""Triton rotary embedding against the reference: forward and grad w.r.t. x (backward: rotation by -sin)."""

from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.float16]


def _cos_sin(n_pos: int, head_dim: int):
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)  # [pos, head_dim/2]
    return freqs.cos(), freqs.sin()


def _parity(reference_ops, triton_ops, check, x, cos, sin):
    x = x.requires_grad_() if x.is_leaf else x
    expected = reference_ops.rotary(x, cos, sin)
    actual = triton_ops.rotary(x, cos, sin)
    check(actual, expected)
    grad_out = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    (actual_grad,) = torch.autograd.grad(actual, x, grad_out)
    check(actual_grad, expected_grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 7, 3, 16), (1, 13, 1, 16)])
def test_rotary_parity(reference_ops, triton_ops, check, dtype, shape):
    cos, sin = _cos_sin(shape[1], shape[-1])
    _parity(reference_ops, triton_ops, check, torch.randn(shape, dtype=dtype), cos, sin)


def test_rotary_of_a_qkv_view(reference_ops, triton_ops, check):
    """q as a strided view of a fused qkv projection [batch, pos, 3 * heads * head_dim]."""
    batch, n_pos, heads, head_dim = 2, 7, 3, 16
    qkv = torch.randn(batch, n_pos, 3 * heads * head_dim, requires_grad=True)
    q = qkv.view(batch, n_pos, 3 * heads, head_dim)[:, :, heads : 2 * heads]  # [batch, pos, heads, head_dim]
    assert not q.is_contiguous()
    cos, sin = _cos_sin(n_pos, head_dim)
    _parity(reference_ops, triton_ops, check, q, cos, sin)


def test_rotary_backward_is_inverse_rotation(triton_ops):
    """The rotation is orthogonal: its backward applied to the output gives back the input."""
    x = torch.randn(2, 7, 3, 16, requires_grad=True)
    cos, sin = _cos_sin(7, 16)
    y = triton_ops.rotary(x, cos, sin)
    (back,) = torch.autograd.grad(y, x, y.detach())
    torch.testing.assert_close(back, x.detach(), rtol=1e-5, atol=1e-5)
