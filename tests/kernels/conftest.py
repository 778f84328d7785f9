"""Kernel tests: the Triton kernels run on CPU through the Triton interpreter.

`TRITON_INTERPRET=1` is read when a `@triton.jit` function is defined, so it is set here, at import,
before any kernel module is imported (test modules reach the Triton ops only through the `triton_ops`
fixture). It stays set for the rest of the pytest process; tests of the compiled kernels on a GPU
belong in a separate pytest run.

The interpreter cannot do bfloat16 arithmetic (the kernels upcast to float32 in-kernel anyway) and
torch's CPU GEMMs have no float32-output half-precision mode, so bf16 — and the half-precision GEMM
path of the fused cross-entropy — are tested on a GPU only. Here: float32 and float16, tiny odd shapes.

Tolerances (`check`): float32 rtol 1e-5, float16 rtol 1e-2, each with an absolute tolerance of the
same size relative to the largest magnitude of the expected tensor.
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

_KERNEL_MODULES = ("rmsnorm", "rotary", "swiglu", "cross_entropy", "_common")
_early = [m for m in _KERNEL_MODULES if f"training.kernels.{m}" in sys.modules]
if _early:
    raise RuntimeError(
        f"training.kernels.{_early[0]} was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
        "run the kernel tests in their own pytest process"
    )

RTOL = {torch.float32: 1e-5, torch.float16: 1e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float | None = None) -> None:
    """Same dtype and shape, equal within `tol` (default: the dtype's, see the module docstring)."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tol = tol if tol is not None else RTOL.get(expected.dtype, RTOL[torch.float32])
    scale = expected.detach().abs().max().float().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().float(), expected.detach().float(), rtol=tol, atol=tol * max(scale, 1e-6))


@pytest.fixture
def check():
    return assert_close


@pytest.fixture(scope="session")
def reference_ops():
    from training.kernels import get_ops

    return get_ops(False)


@pytest.fixture(scope="session")
def triton_ops():
    from training.kernels import get_ops

    return get_ops(True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
