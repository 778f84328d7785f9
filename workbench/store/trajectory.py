"""Trajectories read lazily: a stacked parameter array as an xarray backend array, read by outer selections."""

from __future__ import annotations

import asyncio

import numpy as np
import zarr
from xarray.backends import BackendArray
from xarray.core import indexing
from zarr.core.sync import sync

from workbench.store.layout import bf16_to_float32
from workbench.store.tensors import TensorGroup


class TrajectoryReader(BackendArray):
    """A stacked array seen as `[step (sorted), (layer), *tensor]`, read by outer selections: all (step, layer)
    tensors of a selection concurrently, each through `TensorGroup.read_region` (a corrupt or unreadable
    tensor raises `CorruptData` / `ReadFailed` naming array, step and layer)."""

    def __init__(self, group: TensorGroup, arr: zarr.Array, layer: int | None = None):
        """`layer`: only that layer of a stacked array (its axis dropped)."""
        self.group, self.arr, self.layer = group, arr.async_array, layer
        self.name = arr.path.rsplit("/", 1)[-1]
        self.layered = "layer" in arr.metadata.dimension_names
        self.order = np.argsort(group.steps, kind="stable")  # sorted position -> index on the step axis
        self.shape = arr.shape if layer is None else (arr.shape[0], *arr.shape[2:])
        self.bf16 = arr.attrs["dtype"] == "bfloat16"
        self.dtype = np.dtype(np.float32) if self.bf16 else np.dtype(arr.dtype)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        picks = [_positions(k, n) for k, n in zip(key, self.shape)]
        steps, rest = picks[0], picks[1:]
        if self.layer is not None:
            layers = [self.layer]
        elif self.layered:
            layers, rest = rest[0], rest[1:]
        else:
            layers = [None]
        region = tuple(rest)
        tensor_shape = self.shape[len(self.shape) - len(region):]
        whole = all(len(r) == n and (np.diff(r) == 1).all() for r, n in zip(region, tensor_shape))
        out = np.empty((len(steps), len(layers), *map(len, region)), np.dtype(self.arr.dtype))

        async def read_all():
            await asyncio.gather(*(
                self.group.read_region(self.name, self.arr, self.group.steps[i], int(i), layer,
                                       None if whole else region, out[s, l])
                for s, i in enumerate(self.order[steps]) for l, layer in enumerate(layers)))

        sync(read_all())
        if self.bf16:
            out = bf16_to_float32(out)
        kept = [len(steps), *([len(layers)] if self.layered and self.layer is None else []), *map(len, region)]
        return out.reshape([n for n, k in zip(kept, key) if not isinstance(k, (int, np.integer))])


def _positions(key, n: int) -> np.ndarray:
    """The indices an outer-indexer component (int, slice or int array) selects from an axis of length `n`."""
    if isinstance(key, slice):
        return np.arange(n)[key]
    return np.atleast_1d(np.asarray(key, dtype=np.int64)) % max(n, 1)
