"""Writing a run: one Icechunk commit per checkpoint, tagged by step."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import icechunk
import numpy as np
import zarr
from zarr.core.sync import sync

from workbench.errors import ConcurrentWrite, UsageError
from workbench.store import results as results_io
from workbench.store.layout import CHECKPOINTS, FORMAT_VERSION, META, OPTIMIZER, PARAMS, V3, Layout, role_cuts
from workbench.store.storage import create_repository, local_path, open_repository
from workbench.store.tables import append as append_rows
from workbench.store.tensors import LazyTensor, Tensor, TensorGroup
from workbench.store.textfile import read_text

OptimizerState = dict[str, dict[str, "Tensor"]]  # HF parameter name -> slot (exp_avg, ...) -> tensor or LazyTensor
Tables = dict[str, dict[str, object]]  # table path -> column -> 1-D values
# Checks tensor shapes (name -> shape) against a model config, raising IncompatibleCheckpoint; `complete`: every
# parameter the config implies must be there. The store knows no model: layers above pass one in.
Validator = Callable[[dict[str, tuple[int, ...]], dict, bool], None]
# The parameter roles of a model config (see `layout.head_role`), None when its architecture is not known: told
# by the models layer (`workbench.models.roles.parameter_roles`), as the validator is.
RolesOf = Callable[[dict], "dict | None"]


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"trajectory-workbench {version('trajectory-workbench')}"
    except PackageNotFoundError:
        return "trajectory-workbench (not installed)"


def create(location: str | os.PathLike, model_config: dict, tokenizer=None, train_config: dict | None = None,
           validate: Validator | None = None, layout: Layout = Layout(), roles: dict | None = None) -> "RunWriter":
    """A new run at `location` (local folder or s3://bucket/prefix) with its metadata committed, and its writer.

    `tokenizer` is a `tokenizers.Tokenizer`, its JSON text, or a path to a tokenizer.json. `layout` says how
    tensors are stored (sharded by default, uncompressed; see `Layout`). `roles` says which axes of which
    parameters hold attention heads and MLP neurons (see `layout.head_role`): recorded with the run, they cut
    those axes into inner chunks and serve `Run.head` and `Run.neuron`.
    """
    if not isinstance(model_config, dict):
        raise UsageError("model_config must be a dict of HF LlamaConfig fields (or the model's own HF config)")
    blob = _tokenizer_bytes(tokenizer)
    repo = create_repository(location)
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    root.attrs.update({
        "workbench": {"format_version": FORMAT_VERSION, "code_version": code_version(),
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "layout": layout.to_attrs()},
        "model_config": json.loads(json.dumps(model_config)),
        "train_config": json.loads(json.dumps(train_config)) if train_config is not None else None,
        "parameter_roles": json.loads(json.dumps(roles)) if roles is not None else None,
    })
    if blob:
        _write_tokenizer(root, blob)
    session.commit("create run", metadata={"model_type": model_config.get("model_type")})
    return RunWriter(location, validate=validate, _repo=repo)


class RunWriter:
    """Appends checkpoints (and results) to a run. One writer per group at a time.

    `validate` checks the first checkpoint written against the run's model config (see `Validator`).
    """

    def __init__(self, location: str | os.PathLike, validate: Validator | None = None,
                 _repo: icechunk.Repository | None = None):
        self.location = os.fspath(location)
        self.repo = _repo or open_repository(location)
        self.validate = validate

    def write_checkpoint(self, step: int, state_dict: dict[str, Tensor],
                         optimizer_state: OptimizerState | None = None, overwrite: bool = False,
                         tables: Tables | None = None) -> str:
        """Commit one checkpoint atomically; returns the Icechunk snapshot id.

        Readers see the step whole or not at all. `state_dict` values may be `LazyTensor`s, read one after
        another as they are written (an importer's way to need a few tensors' memory, not the model's). Writing
        an existing step raises `StepExists` unless `overwrite=True`. `tables` (path -> column -> values) are rows appended in the same commit, such
        as the data order and metrics of the steps trained since the previous checkpoint.
        """
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise UsageError(f"step must be a non-negative integer, got {step!r}")
        step = int(step)
        session = self.repo.writable_session("main")
        attrs = zarr.open_group(session.store, mode="r", **V3).attrs.asdict()
        config = attrs.get("model_config") or {}
        if self.validate is not None:
            self.validate({k: tuple(v.shape) for k, v in state_dict.items()}, config, True)
            self.validate = None  # the run's layout is fixed by then: later steps are checked against it
        layout = Layout.from_attrs(attrs.get("workbench", {}).get("layout"))

        async def stage():
            crcs = await _stage_tensors(session.store, step, state_dict, optimizer_state, overwrite, layout,
                                        role_cuts(attrs.get("parameter_roles")))
            await _stage_log(session.store, step, state_dict, crcs, tables or {})

        sync(stage())
        snapshot = self._commit(session, f"checkpoint step {step}", {"step": step})
        self._tag(step, snapshot)
        return snapshot

    def fork_checkpoint(self, step: int, state_dict: dict[str, Tensor], optimizer_state: OptimizerState | None,
                        writers: int, overwrite: bool = False) -> tuple[icechunk.Session, list]:
        """A checkpoint written by several processes, each storing the tensors it holds (Icechunk's distributed
        writes): a session and `writers` forks of it, one for each process's `write_part`; `commit_forks` merges
        them into one commit. `state_dict` and `optimizer_state` give every tensor's name, shape and dtype (meta
        tensors will do). Arrays a fork would have to create (forks may only resize) are created first in a
        commit of their own, with no step on their step axis: what readers see does not change."""
        session = self.repo.writable_session("main")
        layout, cuts = _layout_of(session.store)
        sync(_stage_tensors(session.store, step, state_dict, optimizer_state, overwrite, layout, cuts, grow=False))
        if session.has_uncommitted_changes:
            self._commit(session, f"arrays for checkpoint step {step}", {})
            session = self.repo.writable_session("main")
        return session, [session.fork() for _ in range(writers)]

    @staticmethod
    def write_part(fork, step: int, state_dict: dict[str, Tensor], optimizer_state: OptimizerState | None,
                   overwrite: bool = False) -> dict[str, int]:
        """One process's part of a checkpoint into its fork (see `fork_checkpoint`): every tensor's array sized
        for `step`, the tensors not on the meta device stored; returns their crc32c by name (for the commit)."""
        layout, cuts = _layout_of(fork.store)
        return sync(_stage_tensors(fork.store, step, state_dict, optimizer_state, overwrite, layout, cuts))

    def commit_forks(self, session: icechunk.Session, forks: list, step: int, state_dict: dict[str, Tensor],
                     crcs: list[dict[str, int]], tables: Tables | None = None) -> str:
        """Merge the forks the processes wrote and commit the checkpoint as one commit (its log row and `tables`
        with it); `crcs` are the `write_part` results, one per fork. Returns the snapshot id."""
        session.merge(*forks)
        merged = {name: crc for part in crcs for name, crc in part.items()}
        sync(_stage_log(session.store, step, state_dict, merged, tables or {}))
        snapshot = self._commit(session, f"checkpoint step {step}",
                                {"step": step, "tensors_by_writer": [len(part) for part in crcs]})
        self._tag(step, snapshot)
        return snapshot

    def append(self, tables: Tables, message: str, attrs: dict[str, dict] | None = None) -> str:
        """Append rows to tables (and set their attributes) in one commit of their own."""
        session = self.repo.writable_session("main")

        async def stage():
            for path, rows in tables.items():
                await append_rows(session.store, path, rows, (attrs or {}).get(path))

        sync(stage())
        return self._commit(session, message, {})

    def write_results(self, updates: dict[str, results_io.Update], message: str, metadata: dict | None = None) -> None:
        """Stage results of analyses (`results/<name>`) and commit them as one commit."""
        with self.transaction(message, metadata) as session:
            for name, update in updates.items():
                results_io.stage(session.store, name, update)

    def set_tokenizer(self, tokenizer) -> str:
        """Attach (or replace) the run's tokenizer in a commit of its own."""
        blob = _tokenizer_bytes(tokenizer)
        if not blob:
            raise UsageError("no tokenizer given")
        with self.transaction("attach tokenizer") as session:
            _write_tokenizer(zarr.open_group(session.store, mode="a"), blob)
        return "meta/tokenizer.json"

    @contextmanager
    def transaction(self, message: str, metadata: dict | None = None) -> Iterator[icechunk.Session]:
        """A writable session committed as one commit when the block exits without error (discarded
        otherwise). For writers of their own groups, such as the analyses under `results/`."""
        session = self.repo.writable_session("main")
        yield session
        self._commit(session, message, metadata or {})

    def _commit(self, session: icechunk.Session, message: str, metadata: dict) -> str:
        """Commit under the run's commit lock, rebasing onto commits that touched other arrays (a trainer
        and an analysis may write one run at the same time; both change disjoint groups)."""
        with commit_lock(self.location):
            try:
                return session.commit(message, metadata=metadata, rebase_with=icechunk.ConflictDetector())
            except (icechunk.ConflictError, icechunk.RebaseFailedError) as e:
                raise ConcurrentWrite(f"another process changed the same arrays of {self.location} during "
                                      f"'{message}'; only one writer per group at a time") from e

    def _tag(self, step: int, snapshot: str) -> None:
        """Tag `step-N` (tags are immutable, so a rewritten step gets `step-N.v2`, `.v3`, ...)."""
        tags = self.repo.list_tags()
        name, version = f"step-{step}", 1
        while name in tags:
            version += 1
            name = f"step-{step}.v{version}"
        self.repo.create_tag(name, snapshot)


async def _stage_tensors(store, step: int, state_dict, optimizer_state: OptimizerState | None, overwrite: bool,
                         layout: Layout, cuts: dict[str, tuple[int, int]], grow: bool = True) -> dict[str, int]:
    """A checkpoint's parameters and optimizer state into a session (`grow=False`: only the missing arrays
    created); returns the parameters' crc32c by name."""
    async def write(path: str, tensors: dict[str, Tensor]) -> dict[str, int]:
        group = await TensorGroup.open(store, path, create=True)
        idx = await group.prepare(step, tensors, overwrite, layout, cuts, grow)
        return await group.fill(idx, tensors) if grow else {}

    crcs = await write(PARAMS, state_dict)
    for slot, tensors in _slots(optimizer_state or {}).items():
        await write(f"{OPTIMIZER}/{slot}", tensors)
    return crcs


async def _stage_log(store, step: int, state_dict: dict[str, Tensor], crcs: dict[str, int], tables: Tables) -> None:
    """A checkpoint's row of the checkpoint log, then `tables`, into a session."""
    tables = {**tables, CHECKPOINTS: {"step": [step], "content": [content_digest(state_dict, crcs)],
                                      "written": [datetime.now(timezone.utc).isoformat(timespec="seconds")]}}
    for path, rows in tables.items():
        await append_rows(store, path, rows)


def _layout_of(store) -> tuple[Layout, dict[str, tuple[int, int]]]:
    """A run's layout and parameter-role cuts, from its root attributes in a session's store."""
    attrs = zarr.open_group(store, mode="r", **V3).attrs.asdict()
    return Layout.from_attrs(attrs.get("workbench", {}).get("layout")), role_cuts(attrs.get("parameter_roles"))


def content_digest(state_dict: dict[str, Tensor], crcs: dict[str, int]) -> str:
    """The identity of a checkpoint's parameters: a digest of every tensor's name, dtype, shape and the crc32c
    of its bytes (`crcs`, by name, as `TensorGroup.fill` returns them). Results record it, so a checkpoint
    overwritten with other values makes them stale."""
    h = hashlib.blake2b(digest_size=12)
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{crcs[name]}\n".encode())
    return h.hexdigest()


def _slots(state: OptimizerState) -> dict[str, dict[str, Tensor]]:
    """{param: {slot: t}} -> {slot: {param: t}}; scalar Python numbers become 0-d tensors."""
    import torch

    slots: dict[str, dict[str, Tensor]] = {}
    for name, per_param in state.items():
        for slot, value in per_param.items():
            if not slot.isidentifier():
                raise UsageError(f"optimizer slot name {slot!r} of {name} must be an identifier")
            slots.setdefault(slot, {})[name] = value if isinstance(value, LazyTensor) else torch.as_tensor(value)
    return slots


@contextmanager
def commit_lock(location: str) -> Iterator[None]:
    """Serialise commits to a local run across processes (Icechunk's local storage has no atomic ref
    update; object stores have conditional writes and need no lock)."""
    folder = local_path(location)
    if folder is None:
        yield
        return
    with open(folder / ".commit.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_tokenizer(root: zarr.Group, blob: bytes) -> None:
    tok = root.create_array(f"{META}/tokenizer.json", shape=(len(blob),), chunks=(len(blob),), dtype="uint8",
                            dimension_names=["byte"], attributes={"format": "HF tokenizers JSON, UTF-8"},
                            overwrite=True)
    tok[:] = np.frombuffer(blob, dtype=np.uint8)


def _tokenizer_bytes(tokenizer) -> bytes:
    if tokenizer is None:
        return b""
    if hasattr(tokenizer, "to_str"):
        return tokenizer.to_str().encode("utf-8")
    text = os.fspath(tokenizer)
    if os.path.isfile(text):
        text = read_text(text)
    try:
        json.loads(text)
    except ValueError:
        raise UsageError("tokenizer must be a tokenizers.Tokenizer, its JSON text, or a tokenizer.json path") from None
    return text.encode("utf-8")
