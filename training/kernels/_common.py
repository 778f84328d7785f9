"""Launch helpers shared by the Triton kernels (imported only with them: it imports triton)."""

from __future__ import annotations

import functools

import torch
import triton


def block_size(n: int, max_block: int = 65536) -> int:
    """The power-of-two block that holds `n` elements (one row, one program)."""
    block = triton.next_power_of_2(n)
    if block > max_block:
        raise ValueError(f"a row of {n} elements does not fit one block (at most {max_block})")
    return block


def num_warps(block: int) -> int:
    """Warps for a one-row-per-program kernel, as Liger and the Triton tutorials choose them."""
    if block >= 32768:
        return 32
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_programs(device: torch.device, rows: int) -> int:
    """Programs of a persistent kernel that loops over rows (a few per SM; 4 on the interpreter)."""
    per_device = 4 * _sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(rows, per_device))


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last] with a unit stride along the last dim (a view when the layout allows)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] > 1 and x2.stride(0) < x2.shape[1]:  # overlapping rows (e.g. expanded): copy
        x2 = x2.contiguous()
    return x2
