"""Triton SwiGLU against the reference: forward and grads w.r.t. gate and up."""

from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(13, 96), (2, 7, 33)])
def test_swiglu_parity(reference_ops, triton_ops, check, dtype, shape):
    gate = (3 * torch.randn(shape, dtype=dtype)).requires_grad_()
    up = torch.randn(shape, dtype=dtype).requires_grad_()
    expected = reference_ops.swiglu(gate, up)
    actual = triton_ops.swiglu(gate, up)
    check(actual, expected)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (gate, up), grad_out)
    actual_grads = torch.autograd.grad(actual, (gate, up), grad_out)
    for a, e in zip(actual_grads, expected_grads):
        check(a, e)


def test_swiglu_of_strided_halves(reference_ops, triton_ops, check):
    """gate and up as the two halves of one fused projection [rows, 2 * d_mlp]."""
    gate_up = torch.randn(13, 2 * 33, requires_grad=True)
    gate, up = gate_up[:, :33], gate_up[:, 33:]
    expected, actual = reference_ops.swiglu(gate, up), triton_ops.swiglu(gate, up)
    check(actual, expected)
    grad_out = torch.randn_like(expected)
    check(torch.autograd.grad(actual, gate_up, grad_out)[0], torch.autograd.grad(expected, gate_up, grad_out)[0])
