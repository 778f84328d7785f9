"""Triton RMSNorm against the reference: forward and grads w.r.t. x and weight."""

from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.float16]


def _parity(reference_ops, triton_ops, check, x, weight, eps=1e-6):
    x, weight = x.requires_grad_(), weight.requires_grad_()
    expected = reference_ops.rms_norm(x, weight, eps)
    actual = triton_ops.rms_norm(x, weight, eps)
    check(actual, expected)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, weight), grad_out)
    actual_grads = torch.autograd.grad(actual, (x, weight), grad_out)
    for a, e in zip(actual_grads, expected_grads):
        check(a, e)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(13, 33), (2, 7, 96)])
def test_rms_norm_parity(reference_ops, triton_ops, check, dtype, shape):
    x = 2 * torch.randn(shape, dtype=dtype)
    weight = (1 + 0.1 * torch.randn(shape[-1])).to(dtype)
    _parity(reference_ops, triton_ops, check, x, weight)


def test_rms_norm_strided_rows(reference_ops, triton_ops, check):
    """Rows of a wider tensor (row stride 40 > d 33) are read in place."""
    x = torch.randn(13, 40)[:, :33]
    _parity(reference_ops, triton_ops, check, x, 1 + 0.1 * torch.randn(33), eps=1e-5)


def test_rms_norm_mixed_dtypes_follow_hf(reference_ops, triton_ops, check):
    """float16 activations with a float32 weight give a float32 output, as HF's `weight * x.to(dtype)`."""
    x = torch.randn(7, 33, dtype=torch.float16)
    weight = 1 + 0.1 * torch.randn(33)
    assert triton_ops.rms_norm(x, weight, 1e-6).dtype == torch.float32
    _parity(reference_ops, triton_ops, check, x, weight)
