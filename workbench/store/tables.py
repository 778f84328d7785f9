"""Append-only tables in a run: one 1-D array per column along a shared `row` dimension.

The trainer's data order (`data/order`), its metrics (`metrics`) and the corpus (`data/documents`) are
tables; rows are appended in the same commit as the checkpoint they belong to.
"""

from __future__ import annotations

import asyncio

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
