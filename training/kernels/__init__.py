"""Fused ops of the LLaMA model: RMSNorm, rotary embedding, SwiGLU and linear + cross-entropy.

Two implementations with the same signatures (see `reference.py` for the definitions):

- `reference`: plain PyTorch, any device, autograd backward. The model uses it on CPU.
- Triton (`rmsnorm.py`, `rotary.py`, `swiglu.py`, `cross_entropy.py`): fused kernels with hand-written
  backward kernels, wrapped as `torch.autograd.Function`s. The model uses them on CUDA.

`get_ops(use_triton)` is the one switch. Importing this package is cheap: triton is imported only
when the Triton ops are first asked for. Kernel tests run the Triton code on CPU through the
interpreter (`TRITON_INTERPRET=1`, set before the kernel modules are imported) in float32 and float16;
the interpreter has no bfloat16 arithmetic, so bf16 (and the half-precision GEMM path of the fused
cross-entropy) is tested on a GPU only. The kernels load any dtype, compute in float32 and store the
output dtype.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

__all__ = ["Ops", "get_ops"]


@dataclass(frozen=True)
class Ops:
    """The four ops of one implementation; `name` is "reference" or "triton"."""

    name: str
    rms_norm: Callable  # (x [..., d], weight [d], eps) -> [..., d]
    rotary: Callable  # (x [batch, pos, heads, head_dim], cos, sin [pos, head_dim/2]) -> like x
    swiglu: Callable  # (gate [..., f], up [..., f]) -> [..., f]
    linear_cross_entropy: Callable  # (x [N, d], weight [V, d], target [N], ignore_index, reduction) -> loss


@functools.cache
def get_ops(use_triton: bool) -> Ops:
    """The Triton ops (`use_triton=True`, for CUDA tensors or the interpreter) or the PyTorch reference."""
    if use_triton:
        from .cross_entropy import linear_cross_entropy
        from .rmsnorm import rms_norm
        from .rotary import rotary
        from .swiglu import swiglu

        return Ops("triton", rms_norm, rotary, swiglu, linear_cross_entropy)
    from . import reference

    return Ops(
        "reference", reference.rms_norm, reference.rotary, reference.swiglu, reference.linear_cross_entropy
    )
