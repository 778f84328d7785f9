"""A group of named tensors stored per step: `[step, layer, ...]` arrays plus a `step` coordinate.

The run's parameters are one such group; each optimizer slot (`exp_avg`, `exp_avg_sq`, `step`) is another.
Arrays grow by one along `step` per checkpoint; a step's index is its position in the `step` coordinate.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

import crc32c
import numpy as np
from zarr.api.asynchronous import open_group
from zarr.core.buffer import cpu
from zarr.core.group import AsyncGroup

import icechunk

from workbench.errors import CorruptData, IncompatibleCheckpoint, ReadFailed, StepExists, StepNotFound, first_line
from workbench.store import chunks, shards
from workbench.store.layout import (STEP, TENSORS, V3, Key, Layout, array_codecs, dims_for, encode_dtype,
                                    parse_name, to_numpy, to_torch)

if TYPE_CHECKING:
    import torch  # imported where tensors are read or written: opening a run needs none

# Errors of decoding: chunk bytes that fail their checksum (zarr's and ours are ValueErrors) or that blosc cannot
# decompress (RuntimeError). Fetching them is another matter: an OSError or IcechunkError says nothing of the data.
DECODE_ERRORS = (ValueError, RuntimeError)
FETCH_ERRORS = (OSError, icechunk.IcechunkError)
WRITE_BUDGET = 256 << 20  # bytes of tensors being encoded and written at once (one larger tensor goes alone)


@dataclass(frozen=True)
class LazyTensor:
    """A tensor known by its shape and dtype and read only when it is used (`load()`, or `await load()` when it
    returns an awaitable, as the run's own tensors do): importers, export and repack move checkpoints as these,
    and `RunWriter.write_checkpoint` reads them as its write budget allows (`WRITE_BUDGET`), so that moving a
    checkpoint needs a few tensors' memory, not the model's."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor | Awaitable[torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    async def get(self) -> torch.Tensor:
        """The tensor; a blocking `load` (an importer's file read) runs in a worker thread, so that reads overlap
        the encoding and writing of other tensors."""
        t = self.load() if inspect.iscoroutinefunction(self.load) else await asyncio.to_thread(self.load)
        return await t if inspect.isawaitable(t) else t


Tensor: TypeAlias = "torch.Tensor | LazyTensor"


def reporting(tensors: dict[str, Tensor], done: Callable[[int], object]) -> dict[str, LazyTensor]:
    """`tensors` as `LazyTensor`s that pass their byte count to `done` once loaded: a progress bar over bytes."""

    def wrap(t: Tensor) -> LazyTensor:
        lazy = t if isinstance(t, LazyTensor) else LazyTensor(tuple(t.shape), t.dtype, lambda: t)

        async def load() -> torch.Tensor:
            out = await lazy.get()
            done(lazy.nbytes)
            return out

        return LazyTensor(lazy.shape, lazy.dtype, load)

    return {name: wrap(t) for name, t in tensors.items()}


@dataclass(frozen=True)
class Spec:
    """The stored form of one stacked array: what a checkpoint's tensors must match."""

    template: str
    layers: int | None  # None for an unstacked tensor
    shape: tuple[int, ...]  # one tensor's shape
    dtype: str  # logical dtype name

    def describe(self) -> str:
        layers = f"{self.layers} layers of " if self.layers is not None else ""
        return f"{layers}{list(self.shape)} {self.dtype}"


def specs_of(tensors: dict[str, Tensor]) -> tuple[dict[str, Spec], dict[str, list[tuple[int | None, Tensor]]]]:
    """Group a flat HF state dict by array; check that every stacked array has layers 0..L-1 of one shape."""
    parts: dict[str, list[tuple[Key, torch.Tensor]]] = defaultdict(list)
    for name, t in tensors.items():
        key = parse_name(name)
        parts[key.array].append((key, t))
    specs, items = {}, {}
    for array, entries in parts.items():
        templates = {k.template for k, _ in entries}
        if len(templates) > 1:
            raise IncompatibleCheckpoint(f"names {sorted(templates)} collide in array {array!r}; rename one")
        (template,) = templates
        entries.sort(key=lambda e: -1 if e[0].layer is None else e[0].layer)
        layers = [k.layer for k, _ in entries]
        first = entries[0][1]
        if layers[0] is not None and layers != list(range(len(layers))):
            raise IncompatibleCheckpoint(f"{template} has layers {layers}, expected 0..{len(layers) - 1} without gaps")
        for k, t in entries:
            if t.shape != first.shape or t.dtype != first.dtype:
                raise IncompatibleCheckpoint(
                    f"{k.template.format(layer=k.layer)} is {tuple(t.shape)} {t.dtype}, "
                    f"layer 0 is {tuple(first.shape)} {first.dtype}")
        encode_dtype(first.dtype)
        specs[array] = Spec(template, None if layers[0] is None else len(layers), tuple(first.shape),
                            encode_dtype(first.dtype)[1])
        items[array] = [(k.layer, t) for k, t in entries]
    return specs, items


def _spec_of_array(arr) -> Spec:
    layered = "layer" in arr.metadata.dimension_names
    shape = arr.shape[2:] if layered else arr.shape[1:]
    return Spec(arr.attrs["name"], arr.shape[1] if layered else None, tuple(shape), arr.attrs["dtype"])


@dataclass(frozen=True)
class Codec:
    """How the tensors of one array are encoded: `shards` (the sharded layout, `lz4` or not, `inner` chunks),
    `whole` (format 1: one blosc chunk per tensor) or `zarr` (anything else, through zarr's own pipeline)."""

    kind: str
    lz4: bool = False
    inner: tuple[int, ...] = ()

    @classmethod
    def of(cls, arr) -> "Codec":
        lz4 = shards.lz4_of(arr)
        if lz4 is not None:
            return cls("shards", lz4, shards.inner_of(arr))
        return cls("whole") if chunks.is_direct(arr) else cls("zarr")


class TensorGroup:
    """Read and write one step's tensors in a Zarr group of stacked arrays."""

    def __init__(self, group: AsyncGroup, steps: list[int]):
        self.group, self.steps = group, steps
        self._codecs: dict[str, Codec] = {}  # by array path: reading the codecs from metadata costs ~0.1 ms

    def codec(self, arr) -> Codec:
        if arr.path not in self._codecs:
            self._codecs[arr.path] = Codec.of(arr)
        return self._codecs[arr.path]

    @classmethod
    async def open(cls, store, path: str, create: bool = False) -> "TensorGroup | None":
        try:
            group = await open_group(store=store, path=path, mode="a" if create else "r", **V3)
        except FileNotFoundError:
            return None
        try:
            coord = await group.getitem(STEP)
        except KeyError:
            if not create:
                return None
            await group.update_attributes({"kind": TENSORS})
            await group.create_array(STEP, shape=(0,), chunks=(1024,), dtype="int64", dimension_names=[STEP],
                                     attributes={"units": "optimizer steps", "description": "training step of each index"})
            return cls(group, [])
        return cls(group, [int(s) for s in await coord.getitem(slice(None))])

    def index(self, step: int, what: str = "checkpoint") -> int:
        try:
            return self.steps.index(step)
        except ValueError:
            raise StepNotFound(step, sorted(self.steps), what) from None

    async def arrays(self) -> dict[str, object]:
        return {name: arr async for name, arr in self.group.arrays() if name != STEP}

    async def prepare(self, step: int, tensors: dict[str, Tensor], overwrite: bool = False, layout: Layout = Layout(),
                      cuts: dict[str, tuple[int, int]] | None = None, grow: bool = True) -> int:
        """Stage `step` (the caller commits): the arrays of `tensors` (only their shapes and dtypes count: meta
        tensors will do) created or resized, the step on the step axis; returns its index, for `fill`. Arrays new
        to the group are created in `layout`, cut into inner chunks by `cuts` (template -> axis and width, from the
        run's parameter roles); existing arrays keep theirs. `grow=False` only creates the missing arrays (as long
        as the step axis): forks of one Icechunk session must not create arrays, but may each `prepare` the same
        step and `fill` their own tensors, merged before the commit."""
        specs, items = specs_of(tensors)
        existing = await self.arrays()
        if existing:
            have = {name: _spec_of_array(arr) for name, arr in existing.items()}
            _check_compatible(have, specs)
        if step in self.steps:
            if not overwrite:
                raise StepExists(step)
            idx = self.steps.index(step)
        else:
            idx = len(self.steps)
        n = max(idx + 1, len(self.steps)) if grow else len(self.steps)
        for name, spec in specs.items():
            arr = existing.get(name)
            stacked = (spec.layers,) if spec.layers is not None else ()
            if arr is None:
                stored, _ = encode_dtype(items[name][0][1].dtype)
                arr = await self.group.create_array(
                    name, shape=(n, *stacked, *spec.shape), dtype=stored, fill_value=0,
                    dimension_names=dims_for(len(spec.shape), spec.layers is not None),
                    attributes={"name": spec.template, "dtype": spec.dtype},
                    **array_codecs(stored, layout, spec.shape, 1 + len(stacked), (cuts or {}).get(spec.template)))
            elif arr.shape[0] != n:
                await arr.resize((n, *arr.shape[1:]))
        if not grow:
            return idx
        coord = await self.group.getitem(STEP)
        if coord.shape[0] != n:
            await coord.resize((n,))
        await coord.setitem(idx, step)
        if idx == len(self.steps):
            self.steps.append(step)
        return idx

    async def fill(self, idx: int, tensors: dict[str, Tensor]) -> dict[str, int]:
        """Store the tensors (any of a step's: tensors, or `LazyTensor`s read as they are written; those on the
        meta device skipped) at index `idx` of their `prepare`d arrays; returns the crc32c of each stored tensor's
        bytes by name."""
        import torch

        arrays = await self.arrays()
        crcs: dict[str, int] = {}
        budget = _Budget(WRITE_BUDGET)

        async def put(name: str, key, t: Tensor) -> None:
            async with budget.take(t.nbytes):
                index = (idx,) if key.layer is None else (idx, key.layer)
                crcs[name] = await self._write_tensor(arrays[key.array], index, partial(_numpy_of, t))

        # Layer by layer (unstacked tensors first), as checkpoint files are laid out and as an importer that
        # splits one source tensor into several (fused QKV) reads best.
        keys = {name: parse_name(name) for name, t in tensors.items() if not (isinstance(t, torch.Tensor) and t.is_meta)}
        order = sorted(keys, key=lambda name: -1 if keys[name].layer is None else keys[name].layer)
        await asyncio.gather(*(put(name, keys[name], tensors[name]) for name in order))
        return crcs

    async def _write_tensor(self, arr, index: tuple[int, ...], tensor: Callable[[], Awaitable[np.ndarray]]) -> int:
        """Store one tensor, read by `tensor()` only now and dropped once encoded (so a large one is not held
        beside its shard while the store takes it); returns the crc32c of its bytes (for the content id)."""
        codec = self.codec(arr)
        if codec.kind == "zarr":
            data = await tensor()
            await arr.setitem(index, data)
            return crc32c.crc32c(data.reshape(-1).view(np.uint8))
        encoded, crc = await asyncio.to_thread(_encode, codec, await tensor())
        await self.group.store.set(chunks.key(arr, index), _Bytes(encoded))
        return crc

    async def read(self, step: int, stacked: bool = False) -> dict[str, torch.Tensor]:
        """All tensors of `step`, under their HF names, in the stored dtype; with `stacked`, one tensor per
        array under its template name (`[layer, ...]` for `{layer}` names)."""
        idx = self.index(step)
        arrays = await self.arrays()
        data = await asyncio.gather(*(self.read_array(name, arr, step, idx) for name, arr in arrays.items()))
        out = {}
        for arr, values in zip(arrays.values(), data):
            t = to_torch(values, arr.attrs["dtype"])
            if stacked:
                out[arr.attrs["name"]] = t
            elif "{layer}" in arr.attrs["name"]:
                out.update((arr.attrs["name"].format(layer=i), x) for i, x in enumerate(t.unbind(0)))
            else:
                out[arr.attrs["name"]] = t
        return out

    async def lazy(self, step: int) -> dict[str, LazyTensor]:
        """Every tensor of `step` by HF name as a `LazyTensor` that reads that tensor alone (one layer of one
        array) when loaded: how export and repack move a checkpoint without holding it."""
        import torch

        idx = self.index(step)
        out = {}
        for name, arr in (await self.arrays()).items():
            template, dtype = arr.attrs["name"], getattr(torch, arr.attrs["dtype"])
            if "layer" in arr.metadata.dimension_names:
                out.update((template.format(layer=l), LazyTensor(tuple(arr.shape[2:]), dtype,
                                                                 partial(self._one, name, arr, step, idx, l)))
                           for l in range(arr.shape[1]))
            else:
                out[template] = LazyTensor(tuple(arr.shape[1:]), dtype, partial(self._one, name, arr, step, idx, None))
        return out

    async def _one(self, name: str, arr, step: int, idx: int, layer: int | None) -> torch.Tensor:
        if layer is None:
            return to_torch(await self.read_array(name, arr, step, idx), arr.attrs["dtype"])
        return to_torch(await self.read_array(name, arr, step, idx, slice(layer, layer + 1)), arr.attrs["dtype"])[0]

    async def read_array(self, name: str, arr, step: int, idx: int, layers: slice = slice(None)) -> np.ndarray:
        """One step of one stacked array ([layer, ...] for `layers` of a stacked array, else the tensor),
        decoded tensor by tensor into one buffer; a tensor that fails its checksum raises `CorruptData` naming
        array, step and layer."""
        layered = "layer" in arr.metadata.dimension_names
        codec = self.codec(arr)
        if codec.kind == "zarr":
            with self._reading(name, step):
                return await arr.getitem((idx, layers) if layered else idx)
        wanted = range(*layers.indices(arr.shape[1])) if layered else range(0)
        out = np.empty((len(wanted), *arr.shape[2:]) if layered else arr.shape[1:], dtype=np.dtype(arr.dtype))

        async def one(index, view):
            with self._reading(name, step, index[1] if layered else None):
                await self._read_whole(arr, index, view)

        if layered:
            await asyncio.gather(*(one((idx, layer), out[i, ...]) for i, layer in enumerate(wanted)))
        else:
            await one((idx,), out)
        return out

    async def read_region(self, name: str, arr, step: int, idx: int, layer: int | None,
                          region: tuple[np.ndarray, ...] | None, out: np.ndarray) -> None:
        """Read the outer selection `region` (an int array per tensor axis; None for all of it) of one tensor into
        `out`: of the sharded layout only the inner chunks it touches, of whole-tensor chunks the tensor."""
        index = (idx,) if layer is None else (idx, layer)
        codec = self.codec(arr)
        with self._reading(name, step, layer):
            if codec.kind == "zarr":
                out[...] = await arr.get_orthogonal_selection((*index, *(region or ())))
            elif region is None:
                await self._read_whole(arr, index, out)
            elif codec.kind == "shards":
                out[...] = await shards.read_region(self.group.store, chunks.key(arr, index), arr.shape[len(index):],
                                                    codec.inner, out.dtype, region, codec.lz4, arr.metadata.fill_value)
            else:
                tensor = np.empty(arr.shape[len(index):], out.dtype)
                await chunks.read_into(self.group.store, arr, index, tensor)
                out[...] = tensor[np.ix_(*region)]

    async def _read_whole(self, arr, index: tuple[int, ...], out: np.ndarray) -> None:
        """Decode the tensor at `index` of a `shards` or `whole` array into `out`."""
        codec = self.codec(arr)
        if codec.kind == "shards":
            await shards.read_into(self.group.store, chunks.key(arr, index), codec.inner, out, codec.lz4,
                                   arr.metadata.fill_value)
        else:
            await chunks.read_into(self.group.store, arr, index, out)

    @contextmanager
    def _reading(self, name: str, step: int, layer: int | None = None):
        """Fetch failures as `ReadFailed`, undecodable bytes as `CorruptData`, naming array, step and layer."""
        path, where = f"{self.group.path}/{name}", "" if layer is None else f"layer {layer}: "
        try:
            yield
        except FETCH_ERRORS as e:
            raise ReadFailed(path, step, where + first_line(e)) from e
        except DECODE_ERRORS as e:
            raise CorruptData(path, step, where + first_line(e)) from e


class _Bytes(cpu.Buffer):
    """A zarr buffer over `bytes` whose `to_bytes` is those bytes: Icechunk's `set` takes `bytes`, and a shard
    copied once more on its way there would cost a tensor's memory and time."""

    def __init__(self, data: bytes):
        super().__init__(np.frombuffer(data, dtype=np.uint8))
        self.data = data

    def to_bytes(self) -> bytes:
        return self.data


async def _numpy_of(t: Tensor) -> np.ndarray:
    return to_numpy(await t.get() if isinstance(t, LazyTensor) else t)


def _encode(codec: Codec, tensor: np.ndarray) -> tuple[object, int]:
    """The stored bytes of one tensor (a shard, or a format-1 chunk) and the crc32c of its raw bytes."""
    crc = crc32c.crc32c(tensor.reshape(-1).view(np.uint8))
    return (shards.encode(tensor, codec.inner, codec.lz4) if codec.kind == "shards" else chunks.encode(tensor)), crc


class _Budget:
    """At most `limit` bytes in flight, and always one item, however large: bounds the memory a checkpoint's
    write holds (each tensor and its encoded shard) without serialising small tensors."""

    def __init__(self, limit: int):
        self.limit, self.used, self.free = limit, 0, asyncio.Condition()

    @asynccontextmanager
    async def take(self, n: int) -> AsyncIterator[None]:
        async with self.free:
            await self.free.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            async with self.free:
                self.used -= n
                self.free.notify_all()


def _check_compatible(have: dict[str, Spec], new: dict[str, Spec]) -> None:
    missing, extra = sorted(have.keys() - new.keys()), sorted(new.keys() - have.keys())
    if missing or extra:
        parts = ([f"missing {[have[a].template for a in missing]}"] if missing else []) + (
            [f"unexpected {[new[a].template for a in extra]}"] if extra else [])
        raise IncompatibleCheckpoint("checkpoint does not match the run's parameters: " + "; ".join(parts))
    for name, spec in new.items():
        old = have[name]
        if spec != old:
            raise IncompatibleCheckpoint(f"{spec.template}: run stores {old.describe()}, checkpoint has {spec.describe()}")
