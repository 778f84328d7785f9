"""The direct chunk codec writes exactly the bytes zarr's own codec chain writes, and reads them back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from workbench.store import chunks
from workbench.store.layout import codecs_for


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint16", "int64", "bool"])
@pytest.mark.parametrize("tensor_shape", [(5, 7), (13,), ()])
def test_direct_chunks_equal_zarr_chunks(dtype, tensor_shape):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((2, 3, *tensor_shape)) * 100).astype(dtype)
    store = MemoryStore()
    arr = zarr.create_array(store, name="x", shape=data.shape, chunks=(1, 1, *tensor_shape), dtype=dtype,
                            dimension_names=["step", "layer", *(f"d{i}" for i in range(len(tensor_shape)))],
                            **codecs_for(np.dtype(dtype)))
    arr[...] = data
    assert chunks.is_direct(arr.async_array)
    written = asyncio.run(store.get(chunks.key(arr.async_array, (1, 2)), default_buffer_prototype())).to_bytes()
    assert written == chunks.encode(data[1, 2])
    out = np.empty(tensor_shape, dtype)
    chunks.decode_into(written, out)
    np.testing.assert_array_equal(out, data[1, 2])


def test_a_flipped_byte_fails_the_checksum():
    data = np.arange(12, dtype=np.float32)
    raw = bytearray(chunks.encode(data))
    raw[5] ^= 1
    with pytest.raises(chunks.ChecksumMismatch):
        chunks.decode_into(bytes(raw), np.empty_like(data))


def test_arrays_with_other_codecs_are_not_direct():
    arr = zarr.create_array(MemoryStore(), name="x", shape=(2, 3), chunks=(1, 3), dtype="float32",
                            dimension_names=["step", "dim"])
    assert not chunks.is_direct(arr.async_array)
