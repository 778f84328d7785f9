"""How tensors map onto Zarr arrays: names, layer stacking, dtypes and codecs (see docs/FORMAT.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

FORMAT_VERSION = 1
PARAMS = "params"
OPTIMIZER = "optimizer"
META = "meta"
METRICS = "metrics"
ORDER = "data/order"
DOCUMENTS = "data/documents"
STEP = "step"
TENSORS, TABLE = "tensors", "table"  # the `kind` attribute of stacked-tensor groups and of tables

# The first `.{int}.` of a name is its layer: `model.layers.3.mlp.up_proj.weight` -> `model.layers.{layer}.mlp...`.
_LAYERED = re.compile(r"^(?P<head>.+?)\.(?P<layer>\d+)\.(?P<tail>.+)$")

# torch dtype -> (stored numpy dtype, logical dtype name). bfloat16 has no numpy dtype: its 16-bit pattern is stored.
_DTYPES: dict[torch.dtype, tuple[np.dtype, str]] = {
    torch.float32: (np.dtype("float32"), "float32"),
    torch.float16: (np.dtype("float16"), "float16"),
    torch.bfloat16: (np.dtype("uint16"), "bfloat16"),
    torch.float64: (np.dtype("float64"), "float64"),
    torch.int64: (np.dtype("int64"), "int64"),
    torch.int32: (np.dtype("int32"), "int32"),
    torch.uint8: (np.dtype("uint8"), "uint8"),
    torch.bool: (np.dtype("bool"), "bool"),
}
_LOGICAL = {name: dtype for dtype, (_, name) in _DTYPES.items()}


@dataclass(frozen=True)
class Key:
    """Where one named tensor lives: an array path and, for stacked names, a layer index."""

    template: str  # HF name with `{layer}` in place of the layer index
    array: str  # array name inside its group
    layer: int | None

    @property
    def layered(self) -> bool:
        return self.layer is not None


def parse_name(name: str) -> Key:
    """Split an HF parameter name into its stacked array and layer."""
    m = _LAYERED.match(name)
    if m is None:
        return Key(template=name, array=name, layer=None)
    head, tail = m["head"], m["tail"]
    return Key(template=f"{head}.{{layer}}.{tail}", array=f"{head}.{tail}", layer=int(m["layer"]))


def template_to_array(template: str) -> str:
    """`model.layers.{layer}.mlp.up_proj.weight` -> `model.layers.mlp.up_proj.weight`."""
    return template.replace(".{layer}.", ".")


def dims_for(tensor_ndim: int, layered: bool) -> list[str]:
    """Dimension names of a stacked array: `step`, `layer` when stacked, then the tensor's own axes."""
    own = {0: [], 1: ["dim"], 2: ["out", "in"]}.get(tensor_ndim, [f"dim_{i}" for i in range(tensor_ndim)])
    return [STEP] + (["layer"] if layered else []) + own


def encode_dtype(dtype: torch.dtype) -> tuple[np.dtype, str]:
    """The numpy dtype stored for a torch dtype, and its logical name."""
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be stored; supported: {sorted(_LOGICAL)}") from None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Bit-exact numpy view of a CPU tensor (bfloat16 as its uint16 pattern)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def to_torch(a: np.ndarray, logical: str) -> torch.Tensor:
    """Inverse of `to_numpy` (0-d arrays stay 0-d)."""
    a = np.require(np.asarray(a), requirements="C")
    if logical == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def bf16_to_float32(a: np.ndarray) -> np.ndarray:
    """Exact widening of bfloat16 bit patterns (uint16) to float32, for numpy/dask consumers."""
    return (a.astype(np.uint32) << 16).view(np.float32)


def codecs_for(stored: np.dtype) -> dict:
    """Compressors of a parameter array: bit-shuffled LZ4 (~12% smaller on float weights) and crc32c."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    from workbench.store.chunks import BLOSC

    return {"compressors": [BloscCodec(typesize=stored.itemsize, **BLOSC), Crc32cCodec()]}
