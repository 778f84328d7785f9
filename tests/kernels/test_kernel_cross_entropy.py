"""Fused linear + cross-entropy against the reference: losses and grads w.r.t. x and weight.

N = 37 rows with a few ignored targets, vocab 101. `chunk_size=16` runs three chunks (the last one
short); `MAX_BLOCK_V=32` makes the online softmax walk four vocab blocks (the last one partial).
"""

from __future__ import annotations

import pytest
import torch

N, D_MODEL, VOCAB = 37, 33, 101
DTYPES = [torch.float32, torch.float16]


@pytest.fixture
def cross_entropy_module(triton_ops):
    import training.kernels.cross_entropy as module

    return module


def _inputs(dtype, ignore_index=-100, logit_scale=1.0):
    x = torch.randn(N, D_MODEL, dtype=dtype)
    weight = (logit_scale * 0.3 * torch.randn(VOCAB, D_MODEL)).to(dtype)
    target = torch.randint(0, VOCAB, (N,))
    target[[0, 5, 6, 36]] = ignore_index
    return x, weight, target


def _parity(reference_ops, triton_ops, check, x, weight, target, grads_of=(0, 1), **kwargs):
    """Same loss and same grads (w.r.t. the inputs listed in `grads_of`) for a random grad_output."""
    leaves = [x, weight]
    for i in grads_of:
        leaves[i] = leaves[i].clone().requires_grad_()
    x, weight = leaves
    chunk_size = kwargs.pop("chunk_size", None)
    expected = reference_ops.linear_cross_entropy(x, weight, target, **kwargs)
    actual = triton_ops.linear_cross_entropy(x, weight, target, chunk_size=chunk_size, **kwargs)
    check(actual, expected)
    grad_out = torch.rand_like(expected) + 0.5
    inputs = [leaves[i] for i in grads_of]
    expected_grads = torch.autograd.grad(expected, inputs, grad_out)
    actual_grads = torch.autograd.grad(actual, inputs, grad_out)
    for a, e in zip(actual_grads, expected_grads):
        check(a, e)
    return actual


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [16, None])
@pytest.mark.parametrize("max_block_v", [32, 16384])
def test_linear_cross_entropy_parity(
    reference_ops, triton_ops, check, cross_entropy_module, monkeypatch, dtype, reduction, chunk_size, max_block_v
):
    monkeypatch.setattr(cross_entropy_module, "MAX_BLOCK_V", max_block_v)
    x, weight, target = _inputs(dtype)
    loss = _parity(reference_ops, triton_ops, check, x, weight, target, reduction=reduction, chunk_size=chunk_size)
    if reduction == "none":
        assert (loss[[0, 5, 6, 36]] == 0).all()


def test_ignore_index_that_is_a_token_id(reference_ops, triton_ops, check):
    x, weight, target = _inputs(torch.float32, ignore_index=0)
    _parity(reference_ops, triton_ops, check, x, weight, target, ignore_index=0, chunk_size=16)


@pytest.mark.parametrize("grads_of", [(0,), (1,)])
def test_one_input_requires_grad(reference_ops, triton_ops, check, grads_of):
    """A frozen unembedding (or x without grad) gets no gradient GEMM; the other grad is unchanged."""
    x, weight, target = _inputs(torch.float32)
    _parity(reference_ops, triton_ops, check, x, weight, target, grads_of=grads_of, chunk_size=16)


def test_large_logits_are_stable(reference_ops, triton_ops, check, cross_entropy_module, monkeypatch):
    """Logits in the hundreds: the online softmax must not overflow across vocab blocks."""
    monkeypatch.setattr(cross_entropy_module, "MAX_BLOCK_V", 32)
    x, weight, target = _inputs(torch.float32, logit_scale=60.0)
    loss = _parity(reference_ops, triton_ops, check, x, weight, target, chunk_size=16)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_without_autograd(reference_ops, triton_ops, check, reduction):
    x, weight, target = _inputs(torch.float32)
    with torch.no_grad():
        expected = reference_ops.linear_cross_entropy(x, weight, target, reduction=reduction)
        actual = triton_ops.linear_cross_entropy(x.requires_grad_(), weight, target, reduction=reduction, chunk_size=16)
    assert not actual.requires_grad
    check(actual, expected)


def test_default_chunk_size_bounds_the_logits(cross_entropy_module):
    rows = cross_entropy_module.default_chunk_size(100_000, 32_000, logits_bytes=64 * 2**20)
    assert 1 <= rows and rows * 32_000 * 4 <= 64 * 2**20
    assert cross_entropy_module.default_chunk_size(37, 101) == 37
    assert cross_entropy_module.default_chunk_size(10, 10**9) == 1
