"""Shards of the sharded layout encoded and decoded directly, and read in part.

A shard is one tensor (see `layout.inner_chunks`), cut into inner chunks. Its bytes are what zarr's
`ShardingCodec` writes for inner codecs `bytes → [blosc] → crc32c` and index codecs `bytes → crc32c` with the
index at the end: the inner chunks one after another, then `(offset, nbytes)` of every inner chunk as little
endian uint64 in C order of the inner grid, then the index's crc32c (a test checks the bytes against zarr;
readers may use plain zarr). Doing it here writes each tensor with one copy and no per-chunk pipeline, decodes
straight into the output, and reads a selection with one request for the index and one per inner chunk it
touches, all of a selection's shards at once.
"""

from __future__ import annotations

import asyncio
import itertools

import crc32c
import numpy as np
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from workbench.store.chunks import BLOSC, ChecksumMismatch, blosc_codec, stacked_axes

INLINE = 1 << 20  # shards smaller than this decode on the event loop: a thread hop would cost more
EMPTY = np.iinfo(np.uint64).max  # an index entry of an inner chunk never written: it reads as the fill value


def _crc(data) -> bytes:
    return np.uint32(crc32c.crc32c(data)).tobytes()


def _grid(shape: tuple[int, ...], inner: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s // c for s, c in zip(shape, inner))


def _block(coords: tuple[int, ...], inner: tuple[int, ...]) -> tuple:
    """The index of inner chunk `coords` (a view, also of a 0-d tensor)."""
    return (*(slice(i * c, (i + 1) * c) for i, c in zip(coords, inner)), ...)


def encode(tensor: np.ndarray, inner: tuple[int, ...], lz4: bool) -> bytes:
    """One shard's bytes for `tensor` cut into `inner` chunks, assembled by one `join` (contiguous inner chunks,
    such as row blocks, are not copied before it)."""
    grid = _grid(tensor.shape, inner)
    coords = list(itertools.product(*map(range, grid)))
    index = np.empty((len(coords), 2), dtype="<u8")
    codec = blosc_codec(tensor.dtype.itemsize) if lz4 else None
    pieces, offset = [], 0
    for i, c in enumerate(coords):
        block = np.ascontiguousarray(tensor[_block(c, inner)])  # a view when already contiguous
        body = bytes(codec.encode(block)) if lz4 else memoryview(block.reshape(-1)).cast("B")
        pieces += (body, _crc(body))
        index[i] = offset, len(body) + 4
        offset += len(body) + 4
    index_bytes = index.tobytes()
    pieces += (index_bytes, _crc(index_bytes))
    return b"".join(pieces)


def index_size(shape: tuple[int, ...], inner: tuple[int, ...]) -> int:
    return 16 * int(np.prod(_grid(shape, inner))) + 4


def decode_index(data, shape: tuple[int, ...], inner: tuple[int, ...]) -> np.ndarray:
    """The `(offset, nbytes)` of every inner chunk, shaped like the inner grid plus 2, from the index bytes."""
    view = memoryview(data).cast("B")
    if _crc(view[:-4]) != bytes(view[-4:]):
        raise ChecksumMismatch("stored and computed crc32c of the shard index do not match")
    return np.frombuffer(view[:-4], dtype="<u8").reshape(*_grid(shape, inner), 2)


def decode_chunk(body, out: np.ndarray, lz4: bool) -> None:
    """Check one inner chunk's crc32c and decode it into `out` (a view of the chunk's place, any strides)."""
    view = memoryview(body).cast("B")
    data = view[:-4]
    if _crc(data) != bytes(view[-4:]):
        raise ChecksumMismatch("stored and computed crc32c of an inner chunk do not match")
    if lz4:
        target = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
        blosc_codec(out.dtype.itemsize).decode(data, out=target.reshape(-1).view(np.uint8))
        if target is not out:
            out[...] = target
    else:
        out[...] = np.frombuffer(data, dtype=out.dtype).reshape(out.shape)


def decode_into(data, inner: tuple[int, ...], out: np.ndarray, lz4: bool, fill=0) -> None:
    """Decode a whole shard into `out` (the tensor)."""
    view = memoryview(data).cast("B")
    index = decode_index(view[-index_size(out.shape, inner):], out.shape, inner)
    for coords in itertools.product(*map(range, index.shape[:-1])):
        offset, nbytes = index[coords]
        target = out[_block(coords, inner)]
        if offset == EMPTY:
            target[...] = fill
        else:
            decode_chunk(view[offset: offset + nbytes], target, lz4)


def lz4_of(arr) -> bool | None:
    """Whether a sharded array's inner chunks are LZ4-compressed; None unless `arr` has exactly the shards
    `encode` writes (one tensor per shard, the codecs above)."""
    codecs = arr.metadata.to_dict()["codecs"]
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return None
    config = codecs[0]["configuration"]
    k = stacked_axes(arr)
    if tuple(arr.shards or ()) != (1,) * k + tuple(arr.shape[k:]) or config.get("index_location", "end") != "end":
        return None
    if [(c["name"], c.get("configuration", {}).get("endian", "little")) for c in config["index_codecs"]] != [
            ("bytes", "little"), ("crc32c", "little")]:
        return None
    inner = config["codecs"]
    if inner[0]["name"] != "bytes" or inner[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    names = [c["name"] for c in inner[1:]]
    if names == ["crc32c"]:
        return False
    if names == ["blosc", "crc32c"]:
        blosc = inner[1]["configuration"]
        if (all(blosc[n] == v for n, v in BLOSC.items()) and blosc.get("blocksize", 0) == 0
                and blosc["typesize"] == np.dtype(arr.dtype).itemsize):
            return True
    return None


def inner_of(arr) -> tuple[int, ...]:
    """The inner chunk shape of one tensor of a sharded array (the stacked axes dropped)."""
    return tuple(arr.chunks[stacked_axes(arr):])


async def read_into(store, key: str, inner: tuple[int, ...], out: np.ndarray, lz4: bool, fill=0) -> None:
    """Decode the whole shard `key` into `out`; a shard never written reads as `fill`."""
    buf = await store.get(key, prototype=default_buffer_prototype())
    if buf is None:
        out[...] = fill
    elif len(buf) < INLINE:
        decode_into(buf.as_numpy_array(), inner, out, lz4, fill)
    else:
        await asyncio.to_thread(decode_into, buf.as_numpy_array(), inner, out, lz4, fill)


async def read_region(store, key: str, shape: tuple[int, ...], inner: tuple[int, ...], dtype: np.dtype,
                      region: tuple[np.ndarray, ...], lz4: bool, fill=0) -> np.ndarray:
    """The outer selection `region` (one sorted-or-not int array per axis) of the tensor in shard `key`,
    reading the index and only the inner chunks the selection touches (the whole shard when it touches all)."""
    blocks = [np.unique(idx // c) for idx, c in zip(region, inner)]  # inner-grid coordinates needed, per axis
    if all(len(b) == g for b, g in zip(blocks, _grid(shape, inner))):
        whole = np.empty(shape, dtype)
        await read_into(store, key, inner, whole, lz4, fill)
        return whole[np.ix_(*region)] if region else whole
    prototype = default_buffer_prototype()
    raw = await store.get(key, prototype=prototype, byte_range=SuffixByteRequest(index_size(shape, inner)))
    buffer = np.empty(tuple(len(b) * c for b, c in zip(blocks, inner)), dtype)  # the touched chunks, packed
    if raw is None:
        buffer[...] = fill
    else:
        index = decode_index(raw.as_numpy_array(), shape, inner)

        async def one(packed: tuple[int, ...], coords: tuple[int, ...]) -> None:
            target = buffer[_block(packed, inner)]
            offset, nbytes = (int(v) for v in index[coords])
            if offset == EMPTY:
                target[...] = fill
                return
            body = await store.get(key, prototype=prototype, byte_range=RangeByteRequest(offset, offset + nbytes))
            decode_chunk(body.as_numpy_array(), target, lz4)

        await asyncio.gather(*(one(packed, coords) for packed, coords in zip(
            itertools.product(*(range(len(b)) for b in blocks)), itertools.product(*blocks))))
    # Each wanted index's place in the packed buffer: its chunk's rank among the touched ones, then its offset.
    where = [np.searchsorted(b, idx // c) * c + idx % c for b, idx, c in zip(blocks, region, inner)]
    return buffer[np.ix_(*where)] if where else buffer
