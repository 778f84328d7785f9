"""Whole-tensor chunks encoded and decoded directly, bypassing zarr's generic codec pipeline.

Every parameter chunk is exactly one tensor, so a chunk is `blosc(tensor bytes) + crc32c`, the bytes zarr's
`BytesCodec → BloscCodec → Crc32cCodec` chain produces for the same configuration (a test checks this
against zarr itself; readers use plain zarr). Doing it here saves zarr's fill-value scan and two copies
per chunk on write, and decodes straight into the output tensor on read: about 1.8x faster writes on 2
cores (benchmarks/RESULTS.md). Arrays whose codecs differ from `BLOSC` go through zarr as usual.
"""

from __future__ import annotations

import asyncio

import crc32c
import numpy as np
from numcodecs import Blosc
from zarr.core.buffer import default_buffer_prototype

# The parameter arrays' compressor: bit-shuffled LZ4. clevel 5 compresses as well as 1 on float weights and
# encodes faster (blosc splits the larger blocks across threads).
BLOSC = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}
_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class ChecksumMismatch(ValueError):
    """Stored and computed crc32c of a chunk differ."""


def blosc_codec(itemsize: int) -> Blosc:
    return Blosc(cname=BLOSC["cname"], clevel=BLOSC["clevel"], shuffle=_SHUFFLE[BLOSC["shuffle"]], typesize=itemsize)


def encode(tensor: np.ndarray) -> bytes:
    """One chunk's bytes: blosc-compressed little-endian tensor, then its crc32c (little-endian)."""
    body = blosc_codec(tensor.dtype.itemsize).encode(np.ascontiguousarray(tensor))
    return b"".join((body, np.uint32(crc32c.crc32c(body)).tobytes()))  # one copy of the body, not two


def decode_into(data, out: np.ndarray) -> None:
    """Check a chunk's crc32c and decompress it into `out` (contiguous, the tensor's dtype and shape).
    `data` is any bytes-like object; it is read in place, never copied."""
    view = memoryview(data).cast("B")
    body, stored = view[:-4], bytes(view[-4:])
    if np.uint32(crc32c.crc32c(body)).tobytes() != stored:
        raise ChecksumMismatch("stored and computed crc32c do not match")
    blosc_codec(out.dtype.itemsize).decode(body, out=out.reshape(-1).view(np.uint8))


def is_direct(arr) -> bool:
    """Whether `arr` (an AsyncArray) has one tensor per chunk and exactly the codecs `encode` writes."""
    k = stacked_axes(arr)
    if tuple(arr.chunks) != (1,) * k + tuple(arr.shape[k:]):
        return False
    codecs = arr.metadata.to_dict()["codecs"]
    if [c["name"] for c in codecs] != ["bytes", "blosc", "crc32c"]:
        return False
    if codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return False
    blosc = codecs[1]["configuration"]
    return (all(blosc[name] == value for name, value in BLOSC.items()) and blosc.get("blocksize", 0) == 0
            and blosc["typesize"] == np.dtype(arr.dtype).itemsize)


def stacked_axes(arr) -> int:
    """Leading axes that index tensors (step, and layer when stacked)."""
    return 2 if "layer" in arr.metadata.dimension_names else 1


def key(arr, index: tuple[int, ...]) -> str:
    """Store key of the chunk holding the tensor at `index` (step index, and layer when stacked)."""
    coords = (*index, *(0 for _ in range(arr.ndim - len(index))))
    return f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"


async def read_into(store, arr, index: tuple[int, ...], out: np.ndarray) -> None:
    """Decode the chunk at `index` into `out`; a chunk never written reads as the fill value."""
    buf = await store.get(key(arr, index), prototype=default_buffer_prototype())
    if buf is None:
        out[...] = arr.metadata.fill_value
        return
    await asyncio.to_thread(decode_into, buf.as_numpy_array(), out)
