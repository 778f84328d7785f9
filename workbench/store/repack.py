"""`wb repack`: rewrite a run into another tensor layout, bit-exact.

Every checkpoint (parameters and optimizer state) is written again in the new layout (its inner chunks cut by the
source's parameter roles), one commit per step in the source's order, with the rows of its step-keyed tables
(metrics, data order) in the same commit and the other tables (the corpus, planted facts) with the first; results
and table attributes follow in a last commit, which also records where the run came from. Tensors move one at a
time (a few in flight), read from the source as the new run writes them: memory does not grow with the model.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import numpy as np
import zarr
from zarr.core.sync import sync

from workbench.store.layout import FORMAT_VERSION, META, STEP, TABLE, Layout
from workbench.store.results import RESULTS
from workbench.store.run import Run
from workbench.store.tables import read as read_table
from workbench.store.writer import RolesOf, code_version, create


def repack(source: str | os.PathLike, out: str | os.PathLike, layout: Layout = Layout(),
           progress: bool = True, roles_of: RolesOf | None = None) -> Run:
    """Copy the run at `source` to the new location `out` with tensors in `layout`; returns the new run. The new
    run has the source's parameter roles or, where the source recorded none, those `roles_of` gives for its
    model config."""
    from tqdm.auto import tqdm

    src = Run(source)
    tokenizer = bytes(src.root[f"{META}/tokenizer.json"][:]).decode("utf-8") if src.tokenizer else None
    roles = src.parameter_roles or (roles_of(src.model_config) if roles_of else None)
    writer = create(out, src.model_config, tokenizer=tokenizer, train_config=src.train_config, layout=layout,
                    roles=roles)
    tables = {path: sync(read_table(src.store, path)) for path in _tables(src.root)}
    order = list(src._params.steps) if src._params else []  # the source's step axis, in write order
    previous = -1
    for i, step in enumerate(tqdm(order, desc="repack", unit="checkpoint", disable=not progress)):
        checkpoint = src.checkpoint(step)
        last = i == len(order) - 1
        rows = {path: _rows(columns, previous, step, first=i == 0, last=last) for path, columns in tables.items()}
        writer.write_checkpoint(step, checkpoint.lazy_state_dict(), checkpoint.optimizer_state(lazy=True),
                                tables={path: r for path, r in rows.items() if r is not None})
        previous = max(previous, step)
    with writer.transaction("repack: results, table attributes", {"repacked_from": os.fspath(source)}) as session:
        root = zarr.open_group(session.store, mode="a")
        for path in tables:
            root.require_group(path).attrs.update(src.root[path].attrs.asdict())
        if RESULTS in src.root:
            _copy_tree(src.root[RESULTS], root.require_group(RESULTS), session.store)
        root.attrs["workbench"] = {
            **src.attrs["workbench"], "format_version": FORMAT_VERSION, "layout": layout.to_attrs(),
            "repacked": {"from": os.fspath(source), "by": code_version(),
                         "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    return Run(out)


def _tables(group: zarr.Group, prefix: str = ""):
    """Paths of every table of the run."""
    for name, child in group.groups():
        path = f"{prefix}{name}"
        if child.attrs.get("kind") == TABLE:
            yield path
        elif name != RESULTS:
            yield from _tables(child, path + "/")


def _rows(columns: dict[str, np.ndarray], previous: int, step: int, first: bool, last: bool) -> dict | None:
    """The rows that go with the checkpoint at `step`: of a table keyed by step, those after the previous
    checkpoint up to this one (and, with the last checkpoint, any later); of any other table, all of them with
    the first checkpoint."""
    if STEP not in columns:
        return columns if first else None
    keys = columns[STEP]
    mask = (keys > previous) & ((keys <= step) | last)
    return {name: values[mask] for name, values in columns.items()} if mask.any() else None


def _copy_tree(src: zarr.Group, dst: zarr.Group, store) -> None:
    """Copy a group's arrays (metadata, codecs, attributes) and subgroups."""
    dst.attrs.update(src.attrs.asdict())
    for name, arr in src.arrays():
        zarr.from_array(store, data=arr, name=f"{dst.path}/{name}", attributes=arr.attrs.asdict())
    for name, group in src.groups():
        _copy_tree(group, dst.require_group(name), store)
