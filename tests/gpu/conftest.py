"""Tests that need a CUDA device: skipped without one (CI never has one); `benchmarks/gpu.sh` runs them on a GPU
machine. The kernels here are the compiled Triton kernels, not the interpreter (tests/kernels)."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu.sh on a GPU machine)")
        for item in items:
            item.add_marker(skip)
