"""How tensors map onto Zarr arrays: names, layer stacking, dtypes and codecs (see docs/FORMAT.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from workbench.errors import UsageError

if TYPE_CHECKING:
    import torch  # imported where tensors are handled: reading a run's metadata, tables and results needs none

FORMAT_VERSION = 2  # 2: the `layout` attribute, sharded tensors; format-1 runs still read
PARAMS = "params"
OPTIMIZER = "optimizer"
META = "meta"
METRICS = "metrics"
ORDER = "data/order"
DOCUMENTS = "data/documents"
CHECKPOINTS = "checkpoints"  # the checkpoint log: a row per checkpoint written (step, content digest, time)
STEP = "step"
TENSORS, TABLE = "tensors", "table"  # the `kind` attribute of stacked-tensor groups and of tables
# How the store opens groups: Zarr v3 only, no consolidated metadata, so zarr does not probe (and Icechunk does
# not miss) the keys of other formats: halves the cost of opening a run.
V3 = {"zarr_format": 3, "use_consolidated": False}

# The first `.{int}.` of a name is its layer: `model.layers.3.mlp.up_proj.weight` -> `model.layers.{layer}.mlp...`.
_LAYERED = re.compile(r"^(?P<head>.+?)\.(?P<layer>\d+)\.(?P<tail>.+)$")


@cache
def _dtypes() -> dict[torch.dtype, tuple[np.dtype, str]]:
    """torch dtype -> (stored numpy dtype, logical dtype name). bfloat16 has no numpy dtype: its 16-bit pattern
    is stored."""
    import torch

    return {
        torch.float32: (np.dtype("float32"), "float32"),
        torch.float16: (np.dtype("float16"), "float16"),
        torch.bfloat16: (np.dtype("uint16"), "bfloat16"),
        torch.float64: (np.dtype("float64"), "float64"),
        torch.int64: (np.dtype("int64"), "int64"),
        torch.int32: (np.dtype("int32"), "int32"),
        torch.uint8: (np.dtype("uint8"), "uint8"),
        torch.bool: (np.dtype("bool"), "bool"),
    }


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
        return _dtypes()[dtype]
    except KeyError:
        supported = sorted(name for _, name in _dtypes().values())
        raise TypeError(f"dtype {dtype} cannot be stored; supported: {supported}") from None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Bit-exact numpy view of a CPU tensor (bfloat16 as its uint16 pattern)."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def to_torch(a: np.ndarray, logical: str) -> torch.Tensor:
    """Inverse of `to_numpy` (0-d arrays stay 0-d)."""
    import torch

    a = np.require(np.asarray(a), requirements="C")
    if logical == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def bf16_to_float32(a: np.ndarray) -> np.ndarray:
    """Exact widening of bfloat16 bit patterns (uint16) to float32, for numpy/dask consumers."""
    return (a.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class Layout:
    """How a run stores its tensors, chosen when it is created (root attribute `workbench.layout`).

    `sharded`: one Zarr shard per tensor, with inner chunks along the axes researchers slice (see
    `inner_chunks`), so one head or one neuron reads without the rest of the tensor; otherwise one chunk per
    tensor (format 1). `compression`: `none` (the default: weights shrink by only ~12% under bit-shuffled
    LZ4, which costs CPU on every write and read) or `lz4`. Both keep a crc32c per chunk.
    """

    sharded: bool = True
    compression: str = "none"

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"compression {self.compression!r} is not known; use one of {', '.join(COMPRESSIONS)}")

    def describe(self) -> str:
        return f"{'sharded' if self.sharded else 'whole tensors'}, compression {self.compression}"

    def to_attrs(self) -> dict:
        return {"sharded": self.sharded, "compression": self.compression}

    @classmethod
    def from_attrs(cls, attrs: dict | None) -> "Layout":
        """The layout of a run's root attributes; a format-1 run (none recorded) has whole-tensor LZ4 chunks."""
        return cls(**attrs) if attrs else cls(sharded=False, compression="lz4")


COMPRESSIONS = ("none", "lz4")
BLOCK = 64  # neurons (or rows of other matrices) per inner chunk

# Parameter roles (root attribute `parameter_roles`, told by the models layer; see docs/FORMAT.md): which axis of
# which parameter (by template) holds attention heads and MLP neurons. Head h of projection q, k, v or o is
# `head_dim` indices from h * stride + offset along `axis`.
#   {"head_dim": d, "heads": {proj: head_role(...)}, "neurons": [neuron_role(...), ...]}


def head_role(name: str, axis: int, count: int, stride: int, offset: int = 0) -> dict:
    """The heads of one projection: `count` of them along `axis` of the parameter template `name`."""
    return {"name": name, "axis": axis, "count": count, "stride": stride, "offset": offset}


def neuron_role(proj: str, name: str, axis: int) -> dict:
    """One projection of the MLP (named `proj` in `Run.neuron`): its neurons along `axis` of `name`."""
    return {"proj": proj, "name": name, "axis": axis}


def role_cuts(roles: dict | None) -> dict[str, tuple[int, int]]:
    """{template: (axis, width)} of the inner chunks `roles` imply: one head wide along a head axis, `BLOCK`
    neurons along a neuron axis."""
    if not roles:
        return {}
    cuts = {n["name"]: (n["axis"], BLOCK) for n in roles.get("neurons", [])}
    cuts.update((h["name"], (h["axis"], roles["head_dim"])) for h in roles.get("heads", {}).values())
    return cuts


def inner_chunks(shape: tuple[int, ...], cut: tuple[int, int] | None = None) -> tuple[int, ...]:
    """The inner chunk of one tensor in the sharded layout: a matrix cut along `cut`'s axis into blocks of its
    width (one head, `BLOCK` neurons; see `role_cuts`), any other matrix into blocks of `BLOCK` rows; vectors and
    other tensors whole. A block is the largest divisor of the axis not above its width, as zarr needs inner
    chunks that tile the shard."""
    if len(shape) != 2:
        return tuple(shape)
    axis, width = cut or (0, BLOCK)
    inner = list(shape)
    inner[axis] = _divisor(shape[axis], width)
    return tuple(inner)


def _divisor(n: int, target: int) -> int:
    """The largest divisor of `n` that is at most `target`."""
    return next(d for d in range(min(n, target), 0, -1) if n % d == 0)


def array_codecs(stored: np.dtype, layout: Layout, tensor_shape: tuple[int, ...], leading: int,
                 cut: tuple[int, int] | None = None) -> dict:
    """`zarr.create_array` keywords for a stacked array: chunks (and shards) and compressors. `leading` counts
    the axes that index tensors (step, and layer when stacked); each shard or whole chunk is one tensor, cut into
    inner chunks along `cut` (see `inner_chunks`)."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    from workbench.store.chunks import BLOSC

    compressors = ([BloscCodec(typesize=stored.itemsize, **BLOSC)] if layout.compression == "lz4" else []) + [
        Crc32cCodec()]
    tensor = (1,) * leading + tuple(tensor_shape)
    if not layout.sharded:
        return {"chunks": tensor, "compressors": compressors}
    inner = (1,) * leading + inner_chunks(tuple(tensor_shape), cut)
    return {"chunks": inner, "shards": tensor, "compressors": compressors}
