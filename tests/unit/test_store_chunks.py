"""The direct codecs write exactly the bytes zarr's own codec chains write (whole-tensor chunks of format 1,
shards of the sharded layout), read them back, and read selections of a shard from only the chunks they touch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from training.model import parameter_roles
from workbench.store import chunks, shards
from workbench.store.layout import Layout, array_codecs, inner_chunks, role_cuts

WHOLE = Layout(sharded=False, compression="lz4")
CUTS = role_cuts(parameter_roles(heads=4, kv_heads=2, head_dim=8))  # of a LLaMA


def stacked_array(store, data: np.ndarray, layout: Layout, template: str = "x"):
    """A `[step, layer, *tensor]` array of `data` created as the run store creates one, written by zarr."""
    tensor = data.shape[2:]
    arr = zarr.create_array(store, name="x", shape=data.shape, dtype=data.dtype,
                            dimension_names=["step", "layer", *(f"d{i}" for i in range(len(tensor)))],
                            **array_codecs(data.dtype, layout, tensor, 2, CUTS.get(template)))
    arr[...] = data
    return arr


def stored(store, key: str, byte_range=None) -> bytes:
    return asyncio.run(store.get(key, default_buffer_prototype(), byte_range)).to_bytes()


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint16", "int64", "bool"])
@pytest.mark.parametrize("tensor_shape", [(5, 7), (13,), ()])
def test_direct_chunks_equal_zarr_chunks(dtype, tensor_shape):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((2, 3, *tensor_shape)) * 100).astype(dtype)
    store = MemoryStore()
    arr = stacked_array(store, data, WHOLE)
    assert chunks.is_direct(arr.async_array) and shards.lz4_of(arr.async_array) is None
    written = stored(store, chunks.key(arr.async_array, (1, 2)))
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
    assert not chunks.is_direct(arr.async_array) and shards.lz4_of(arr.async_array) is None


# (LLaMA template, tensor shape, inner chunk): heads of 8 rows / columns, blocks of 64 neurons (rows of up, columns
# of down) or rows (of matrices without a role), a vector and a scalar whole.
ROLES = [
    ("model.layers.{layer}.self_attn.q_proj.weight", (32, 24), (8, 24)),
    ("model.layers.{layer}.self_attn.k_proj.weight", (16, 24), (8, 24)),
    ("model.layers.{layer}.self_attn.o_proj.weight", (24, 32), (24, 8)),
    ("model.layers.{layer}.mlp.up_proj.weight", (192, 24), (64, 24)),
    ("model.layers.{layer}.mlp.down_proj.weight", (24, 192), (24, 64)),
    ("model.embed_tokens.weight", (120, 24), (60, 24)),  # 64 does not divide 120: the largest divisor below
    ("model.layers.{layer}.input_layernorm.weight", (24,), (24,)),
    ("state.step", (), ()),
]


@pytest.mark.parametrize("template,shape,inner", ROLES, ids=[r[0].split(".")[-2] for r in ROLES])
def test_inner_chunks_follow_the_axes_researchers_slice(template, shape, inner):
    assert inner_chunks(shape, CUTS.get(template)) == inner


@pytest.mark.parametrize("compression", ["none", "lz4"])
@pytest.mark.parametrize("dtype", ["float32", "uint16"])
@pytest.mark.parametrize("template,shape,inner", ROLES[:6], ids=[r[0].split(".")[-2] for r in ROLES[:6]])
def test_direct_shards_equal_zarr_shards(template, shape, inner, dtype, compression):
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((2, 2, *shape)) * 1000 + 5000).astype(dtype)  # no inner chunk equals the fill value
    store = MemoryStore()
    arr = stacked_array(store, data, Layout(sharded=True, compression=compression), template)
    lz4 = shards.lz4_of(arr.async_array)
    assert lz4 is (compression == "lz4") and shards.inner_of(arr.async_array) == inner
    key = chunks.key(arr.async_array, (1, 0))
    written = stored(store, key)
    assert written == shards.encode(data[1, 0], inner, lz4)
    out = np.empty(shape, dtype)
    shards.decode_into(written, inner, out, lz4)
    np.testing.assert_array_equal(out, data[1, 0])


class Counting(MemoryStore):
    """A memory store that counts the requests and bytes its `get` returns."""

    requests = 0
    returned = 0

    async def get(self, key, prototype, byte_range=None):
        buf = await super().get(key, prototype, byte_range)
        self.requests += 1
        self.returned += 0 if buf is None else len(buf)
        return buf


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_a_selection_reads_the_index_and_only_the_chunks_it_touches(compression):
    rng = np.random.default_rng(2)
    data = rng.standard_normal((1, 1, 24, 192)).astype("float32")  # down_proj: column blocks of 64
    store = Counting()
    arr = stacked_array(store, data, Layout(sharded=True, compression=compression),
                        "model.layers.{layer}.mlp.down_proj.weight")
    key, lz4 = chunks.key(arr.async_array, (0, 0)), compression == "lz4"
    index = stored(store, key)[-shards.index_size((24, 192), (24, 64)):]
    entries = np.frombuffer(index[:-4], dtype="<u8").reshape(3, 2)
    store.requests = store.returned = 0
    region = (np.array([3, 0, 23]), np.array([130, 70, 129]))  # rows in any order; columns in blocks 2 and 1
    got = asyncio.run(shards.read_region(store, key, (24, 192), (24, 64), np.dtype("float32"), region, lz4))
    np.testing.assert_array_equal(got, data[0, 0][np.ix_(*region)])
    assert store.requests == 3  # the index, then inner chunks 1 and 2
    assert store.returned == len(index) + int(entries[1, 1] + entries[2, 1])
    store.requests = store.returned = 0
    everything = (np.arange(24), np.arange(192))
    got = asyncio.run(shards.read_region(store, key, (24, 192), (24, 64), np.dtype("float32"), everything, lz4))
    np.testing.assert_array_equal(got, data[0, 0])
    assert store.requests == 1  # a selection that touches every chunk reads the shard in one request


def test_a_flipped_byte_in_an_inner_chunk_or_the_index_fails_its_checksum():
    data = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
    good = shards.encode(data, (16, 4), lz4=False)
    for where in (5, len(good) - 10):  # inside the first inner chunk, inside the index
        raw = bytearray(good)
        raw[where] ^= 1
        with pytest.raises(chunks.ChecksumMismatch):
            shards.decode_into(raw, (16, 4), np.empty_like(data), lz4=False)
