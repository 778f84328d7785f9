"""The reference ops against independent computations: HF LLaMA modules and F.cross_entropy on full logits."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from training.kernels import reference

DTYPES = [torch.float32, torch.float16]


def test_import_is_cheap():
    """`import training.kernels` pulls in neither triton nor torch; `get_ops(False)` needs no triton."""
    code = (
        "import sys, training.kernels as k; assert 'triton' not in sys.modules and 'torch' not in sys.modules; "
        "ops = k.get_ops(False); assert ops.name == 'reference' and 'triton' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_get_ops_switch(reference_ops, triton_ops):
    assert reference_ops.rms_norm is reference.rms_norm
    assert reference_ops.linear_cross_entropy is reference.linear_cross_entropy
    assert triton_ops.name == "triton"
    assert triton_ops.rotary.__module__ == "training.kernels.rotary"
    assert triton_ops.linear_cross_entropy.__module__ == "training.kernels.cross_entropy"


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_is_hf_llama_rms_norm(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(33, eps=1e-6)
    with torch.no_grad():
        norm.weight.add_(0.1 * torch.randn(33))
    norm = norm.to(dtype)
    x = 3 * torch.randn(2, 7, 33, dtype=dtype)
    torch.testing.assert_close(reference.rms_norm(x, norm.weight, 1e-6), norm(x), rtol=0, atol=0)


def hf_cos_sin(n_pos: int, head_dim: int, theta: float = 10000.0):
    """cos, sin [pos, head_dim] built the HF way: cat((freqs, freqs), -1)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [head_dim/2]
    freqs = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)  # [pos, head_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [pos, head_dim]
    return emb.cos(), emb.sin()


def test_hf_cos_sin_match_llama_rotary_embedding(tiny_config):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    head_dim = tiny_config.hidden_size // tiny_config.num_attention_heads
    x = torch.randn(1, 11, tiny_config.hidden_size)
    cos, sin = LlamaRotaryEmbedding(tiny_config)(x, torch.arange(11)[None])  # [1, pos, head_dim]
    expected_cos, expected_sin = hf_cos_sin(11, head_dim, tiny_config.rope_parameters["rope_theta"])
    torch.testing.assert_close(cos[0], expected_cos)
    torch.testing.assert_close(sin[0], expected_sin)


def test_rotary_is_hf_apply_rotary_pos_emb():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    batch, n_pos, heads, head_dim = 2, 13, 3, 16
    q = torch.randn(batch, n_pos, heads, head_dim)
    k = torch.randn(batch, n_pos, 1, head_dim)
    cos, sin = hf_cos_sin(n_pos, head_dim)  # [pos, head_dim]
    # HF layout: [batch, heads, pos, head_dim], cos/sin [batch, pos, head_dim] unsqueezed at dim 1.
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])
    half = head_dim // 2
    torch.testing.assert_close(reference.rotary(q, cos[:, :half], sin[:, :half]), q_hf.transpose(1, 2))
    torch.testing.assert_close(reference.rotary(k, cos[:, :half], sin[:, :half]), k_hf.transpose(1, 2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_is_silu_gate_times_up(dtype):
    gate, up = torch.randn(13, 33, dtype=dtype), torch.randn(13, 33, dtype=dtype)
    expected = (gate.double() * torch.sigmoid(gate.double()) * up.double()).to(dtype)
    torch.testing.assert_close(reference.swiglu(gate, up), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_linear_cross_entropy_is_cross_entropy_of_full_logits(reduction, ignore_index):
    n, d_model, vocab = 37, 33, 101
    x = torch.randn(n, d_model, dtype=torch.float64, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, d_model, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, vocab, (n,))
    target[[0, 5, 36]] = ignore_index
    target[7] = 3  # ignored too when ignore_index == 3

    # Independent: float64 logits, log-softmax written out, mean over the non-ignored tokens.
    logits = x @ weight.T  # [N, vocab]
    keep = target != ignore_index
    nll = -(logits.log_softmax(-1).gather(-1, target.clamp(0, vocab - 1)[:, None])[:, 0])
    nll = torch.where(keep, nll, 0.0)  # [N]
    expected = {"mean": nll.sum() / keep.sum(), "sum": nll.sum(), "none": nll}[reduction]
    if reduction == "none":
        assert (expected[~keep] == 0).all()

    xf, wf = x.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    loss = reference.linear_cross_entropy(xf, wf, target, ignore_index=ignore_index, reduction=reduction)
    assert loss.dtype == torch.float32 and loss.shape == expected.shape
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, F.cross_entropy(xf @ wf.T, target, ignore_index=ignore_index, reduction=reduction))

    grad_out = torch.randn(expected.shape, dtype=torch.float64)
    expected_grads = torch.autograd.grad(expected, (x, weight), grad_out)
    grads = torch.autograd.grad(loss, (xf, wf), grad_out.float())
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_computes_in_float32():
    x, weight = torch.randn(13, 33, dtype=torch.float16), torch.randn(101, 33, dtype=torch.float16)
    target = torch.randint(0, 101, (13,))
    loss = reference.linear_cross_entropy(x, weight, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(x.float() @ weight.float().T, target))
