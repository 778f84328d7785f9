"""Append-only tables in a run: one 1-D array per column along a shared `row` dimension.

The trainer's data order (`data/order`), its metrics (`metrics`), the corpus (`data/documents`) and the
checkpoint log (`checkpoints`) are tables; rows are appended in the same commit as the checkpoint they belong to.
Fingerprints say whether the rows an analysis read have changed since (see `fingerprint`, `fingerprints_upto`).
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
from zarr.api.asynchronous import open_group

from workbench.store.layout import TABLE, V3

ROW = "row"
CHUNK_ROWS = 1 << 16


def _as_column(values) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind in "US" or a.dtype == object:
        return a.astype(object)
    return a


async def append(store, path: str, rows: dict[str, object], attrs: dict | None = None) -> None:
    """Append `rows` (column -> 1-D values of equal length) to the table at `path`, creating it if needed."""
    columns = {k: _as_column(v) for k, v in rows.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"table {path}: columns have different lengths {sorted(lengths)}")
    (n_new,) = lengths
    group = await open_group(store=store, path=path, mode="a")
    if attrs or group.attrs.get("kind") != TABLE:
        await group.update_attributes({**(attrs or {}), "kind": TABLE})
    existing = {name: arr async for name, arr in group.arrays()}
    if existing and existing.keys() != columns.keys():
        raise ValueError(f"table {path} has columns {sorted(existing)}, got {sorted(columns)}")
    n_old = next(iter(existing.values())).shape[0] if existing else 0
    if n_new == 0:
        return

    async def write(name, values):
        arr = existing.get(name)
        if arr is None:
            dtype = str if values.dtype == object else values.dtype
            arr = await group.create_array(name, shape=(0,), chunks=(CHUNK_ROWS,), dtype=dtype, dimension_names=[ROW])
        await arr.resize((n_old + n_new,))
        await arr.setitem(slice(n_old, n_old + n_new), values)

    await asyncio.gather(*(write(k, v) for k, v in columns.items()))


async def read(store, path: str) -> dict[str, np.ndarray] | None:
    """All columns of the table at `path`, or None when the run has no such table."""
    try:
        group = await open_group(store=store, path=path, mode="r", **V3)
    except FileNotFoundError:
        return None
    arrays = {name: arr async for name, arr in group.arrays()}
    values = await asyncio.gather(*(arr.getitem(slice(None)) for arr in arrays.values()))
    return dict(zip(arrays, values))


def fingerprint(columns: dict[str, np.ndarray]) -> str:
    """A digest of a table's content: column names, dtypes and values in row order."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(columns):
        values = columns[name]
        h.update(f"{name}\0{values.dtype.kind}\0{len(values)}\0".encode())
        if values.dtype.kind in "OUT":
            for v in values.tolist():
                b = str(v).encode("utf-8")
                h.update(len(b).to_bytes(8, "little") + b)
        else:
            h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def fingerprints_upto(columns: dict[str, np.ndarray], steps, key: str = "step") -> dict[int, str]:
    """For each of `steps`, a digest of the rows whose `key` is at most that step, whatever their order: rows
    appended for later steps leave it unchanged, a row changed, added or removed at or before it changes it.
    (The row count and the wrapping sum of 64-bit row hashes: vectorised, one pass over the table.)"""
    keys = np.asarray(columns[key], dtype=np.int64)
    rows = np.zeros(len(keys), dtype=np.uint64)
    for i, name in enumerate(sorted(columns)):
        rows = _mix(rows ^ _mix(_as_uint64(columns[name]) + np.uint64(i + 1)))
    order = np.argsort(keys, kind="stable")
    cumulative = np.cumsum(rows[order], dtype=np.uint64)
    out = {}
    for s in steps:
        n = int(np.searchsorted(keys[order], s, side="right"))
        out[int(s)] = f"{n}:{int(cumulative[n - 1]) if n else 0:016x}"
    return out


def _as_uint64(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "OUT":
        digest = [hashlib.blake2b(str(v).encode("utf-8"), digest_size=8).digest() for v in values.tolist()]
        return np.frombuffer(b"".join(digest), dtype=np.uint64).copy() if digest else np.zeros(0, np.uint64)
    if values.dtype.kind == "f":
        values = values.astype(np.float64).view(np.int64)
    return values.astype(np.int64).view(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit over the output."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
