"""Reading a run: its steps, metadata, tables, results, checkpoints and lazy trajectories across steps.

The store's reader is pure: it knows the run format and nothing above it. The user-facing `Run` that
`workbench.open` returns (`workbench.api`) extends it with analyses and model views.
"""

from __future__ import annotations

import difflib
import os
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import zarr
from zarr.errors import GroupNotFoundError
from zarr.core.sync import sync

from workbench.errors import MissingData, RunNotFound, StepNotFound, UsageError
from workbench.store import results as results_io
from workbench.store.layout import (CHECKPOINTS, DOCUMENTS, META, METRICS, OPTIMIZER, ORDER, PARAMS, STEP, V3, Layout,
                                    parse_name, to_torch)
from workbench.store.storage import open_repository
from workbench.store import tables
from workbench.store.tables import read as read_table
from workbench.store.tensors import LazyTensor, TensorGroup

if TYPE_CHECKING:
    import torch  # imported by the reads of tensors (`Checkpoint`): opening a run and reading its tables needs none


class Run:
    """A training trajectory: every checkpoint of one run, read from its Icechunk repository.

    The view is one snapshot of the run's `main` branch (`snapshot` is its id): by default the newest
    commit, and `refresh()` moves it to the newest again, so a reader opened while a trainer writes sees
    new checkpoints only whole. With `snapshot=ID` the view stays on that commit (`refresh()` re-reads it):
    what analysis workers open, so that every task of one plan reads the same data.
    """

    checkpoint_type: type["Checkpoint"]  # what `checkpoint()` returns; set below, extended by workbench.api

    def __init__(self, location: str | os.PathLike, snapshot: str | None = None):
        self.repo = open_repository(location)  # checks what `location` is first
        self.location = os.fspath(location)
        self.pinned = snapshot
        self.refresh()

    def refresh(self) -> "Run":
        """Move to the newest committed state of the run (or re-read the pinned snapshot)."""
        if self.pinned is None:
            self.session = self.repo.readonly_session(branch="main")
        else:
            self.session = self.repo.readonly_session(snapshot_id=self.pinned)
        self.store = self.session.store
        try:
            self.root = zarr.open_group(self.store, mode="r", **V3)
        except GroupNotFoundError:
            raise RunNotFound(f"{self.location} is an empty Icechunk repository, not a workbench run "
                              "(a creation that was interrupted?)") from None
        self.attrs = self.root.attrs.asdict()
        if "workbench" not in self.attrs:
            raise RunNotFound(f"{self.location} is an Icechunk repository but not a workbench run "
                              "(no 'workbench' attribute at its root)")
        self._params = sync(TensorGroup.open(self.store, PARAMS))
        for cached in ("tokenizer", "_order", "parameter_arrays", "checkpoint_ids"):
            self.__dict__.pop(cached, None)
        self._fingerprints: dict[tuple, object] = {}
        return self

    def __repr__(self) -> str:
        steps = self.steps
        span = f"{steps[0]}..{steps[-1]}" if steps else "none"
        return f"Run({self.location!r}, {len(steps)} checkpoints, steps {span})"

    @property
    def snapshot(self) -> str:
        """Id of the Icechunk snapshot this view reads: changes with every commit to the run."""
        return self.session.snapshot_id

    @property
    def steps(self) -> list[int]:
        """Committed checkpoint steps, sorted."""
        return sorted(self._params.steps) if self._params else []

    @property
    def model_config(self) -> dict:
        return dict(self.attrs.get("model_config") or {})

    @property
    def train_config(self) -> dict | None:
        return self.attrs.get("train_config")

    @property
    def layout(self) -> Layout:
        """How the run stores tensors it creates (format-1 runs: whole-tensor LZ4 chunks)."""
        return Layout.from_attrs(self.attrs["workbench"].get("layout"))

    @property
    def code_version(self) -> str | None:
        return self.attrs["workbench"].get("code_version")

    @cached_property
    def tokenizer(self):
        """The run's `tokenizers.Tokenizer`, or None when the run has none."""
        try:
            arr = self.root[f"{META}/tokenizer.json"]
        except KeyError:
            return None
        from tokenizers import Tokenizer

        return Tokenizer.from_str(bytes(arr[:]).decode("utf-8"))

    @cached_property
    def parameter_arrays(self) -> dict[str, zarr.Array]:
        """Stacked parameter arrays by template name (`model.layers.{layer}.mlp.up_proj.weight`)."""
        if self._params is None:
            return {}
        group = self.root[PARAMS]
        return {a.attrs["name"]: a for name, a in group.arrays() if name != STEP}

    def parameter_names(self) -> list[str]:
        """Every HF parameter name of one checkpoint."""
        names = []
        for template, arr in self.parameter_arrays.items():
            if "{layer}" in template:
                names += [template.format(layer=i) for i in range(arr.shape[1])]
            else:
                names.append(template)
        return names

    def table(self, path: str, what: str | None = None):
        """A table of the run (`metrics`, `data/order`, `data/documents`, ...) as a pandas DataFrame; None when
        the run has none, or with `what` (how to name it), `MissingData`."""
        import pandas as pd

        columns = sync(read_table(self.store, path))
        if columns is None:
            if what is None:
                return None
            raise MissingData(f"{self.location} has no {what} (an imported run?)")
        return pd.DataFrame(columns)

    @cached_property
    def checkpoint_ids(self) -> dict[int, str]:
        """{step: content digest of its parameters} from the checkpoint log: changes when a step is overwritten
        with other values. Steps written before the log existed have the id "" (they count as unchanged)."""
        log = sync(read_table(self.store, CHECKPOINTS)) or {"step": [], "content": []}
        ids = dict.fromkeys(self.steps, "")
        ids.update(zip((int(s) for s in log["step"]), (str(c) for c in log["content"])))  # the last row wins
        return {s: ids[s] for s in self.steps}

    def table_fingerprint(self, path: str, upto: tuple[int, ...] | None = None) -> "str | dict[int, str] | None":
        """A digest of the table at `path` (None when the run has none); with `upto`, {step: digest of the rows
        of steps up to it} for a table with a `step` column, such as the data order. Kept for this snapshot."""
        key = (path, upto)
        if key not in self._fingerprints:
            columns = sync(read_table(self.store, path))
            if columns is None:
                self._fingerprints[key] = None
            elif upto is None:
                self._fingerprints[key] = tables.fingerprint(columns)
            else:
                self._fingerprints[key] = tables.fingerprints_upto(columns, upto)
        return self._fingerprints[key]

    def metrics(self):
        """Training metrics, one row per step (loss, lr, grad_norm, tokens, tokens_per_s, ...), indexed by step."""
        return self.table(METRICS, "training metrics").set_index("step").sort_index()

    @cached_property
    def _order(self):
        return self.table(ORDER, "data order")

    def batch(self, step: int) -> list[dict]:
        """The (document_id, offset, length, position) spans that formed each sequence of the batch at `step`."""
        df = self._order[self._order["step"] == step]
        if df.empty:
            raise StepNotFound(step, sorted(self._order["step"].unique().tolist()), "recorded batch")
        df = df.sort_values("position", kind="stable")  # rows keep their order within a sequence
        return [{k: int(row[k]) for k in ("document_id", "offset", "length", "position")}
                for row in df.to_dict("records")]

    def steps_seen(self, document_id: int) -> list[int]:
        """The training steps whose batches contained (part of) `document_id`, sorted."""
        steps = self._order.loc[self._order["document_id"] == document_id, "step"]
        return sorted(int(s) for s in steps.unique())

    def documents(self):
        """The training corpus as a DataFrame (document_id, text, domain, split, ...); `MissingData` if not stored."""
        return self.table(DOCUMENTS, "training corpus")

    def find_documents(self, text: str, context: int = 40) -> list[dict]:
        """Documents containing `text` (exact substring), with a snippet around the first hit."""
        if not text:
            raise UsageError("give a non-empty text to search for")
        docs = self.documents()
        hits = []
        for row in docs[docs["text"].str.contains(text, regex=False)].to_dict("records"):
            i = row["text"].find(text)
            snippet = row["text"][max(0, i - context): i + len(text) + context].replace("\n", " ")
            hits.append({**{k: v for k, v in row.items() if k != "text"}, "snippet": snippet})
        return hits

    def checkpoint(self, step: int) -> "Checkpoint":
        """The checkpoint at `step`; `StepNotFound` names the nearest steps."""
        if self._params is None:
            raise StepNotFound(step, [])
        self._params.index(step)
        return self.checkpoint_type(self, step)

    def trajectory(self, name: str):
        """One parameter across all steps as a lazy `xarray.DataArray`, sorted by step.

        `name` is an HF name: with `{layer}` for every layer (dims `step, layer, ...`), with a layer index
        for one layer, or an unstacked name (dims `step, ...`). bfloat16 is widened exactly to float32.
        Nothing is read until values are asked for; then only what `.sel` / `.isel` selected: in the sharded
        layout, only the inner chunks (one head, a block of neurons) that the selection touches, fetched
        concurrently for all steps. `.chunk(...)` makes it a dask array.
        """
        import xarray as xr
        from xarray.core import indexing

        from workbench.store.trajectory import TrajectoryReader

        key = parse_name(name) if "{layer}" not in name else None
        template = key.template if key else name
        arrays = self.parameter_arrays
        if template not in arrays:
            close = difflib.get_close_matches(template, list(arrays), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see Run.parameter_names()"
            raise UsageError(f"no parameter {name!r} in this run{hint}")
        arr = arrays[template]
        layer = key.layer if key and key.layered else None
        if layer is not None and layer >= arr.shape[1]:
            raise UsageError(f"{name!r}: layer {layer} out of range, the run has {arr.shape[1]} layers")
        reader = TrajectoryReader(self._params, arr, layer)
        dims = [d for d in arr.metadata.dimension_names if not (layer is not None and d == "layer")]
        coords = {STEP: np.sort(np.asarray(self._params.steps, dtype=np.int64), kind="stable")}
        if "layer" in dims:
            coords["layer"] = np.arange(arr.shape[1])
        variable = xr.Variable(dims, indexing.LazilyIndexedArray(reader),
                               attrs={"stored_dtype": arr.attrs["dtype"], "parameter": template})
        return xr.DataArray(variable, coords=coords, name=name if layer is not None else template)

    @property
    def parameter_roles(self) -> dict | None:
        """Which axes of which parameters hold attention heads and MLP neurons (root attribute `parameter_roles`,
        told by the models layer when the run was created; see `layout.head_role`); None when it recorded none."""
        return self.attrs.get("parameter_roles")

    def _roles(self, kind: str) -> dict | list:
        """The `heads` or `neurons` of the run's parameter roles; `UsageError` when it has none."""
        roles = (self.parameter_roles or {}).get(kind)
        if not roles:
            raise UsageError(f"{self.location} records no {kind} among its parameter roles (model_type "
                             f"{self.model_config.get('model_type')!r}); workbench.open derives them from the model "
                             "config of the architectures it knows")
        return roles

    def head(self, layer: int, head: int, proj: str = "q"):
        """One attention head of `layer` across all steps, lazily (see `trajectory`): for `proj` q, k or v its
        rows `[step, out=head_dim, in]`, for o its columns `[step, out, in=head_dim]`, whatever the parameter's
        own layout (fused QKV, GPT-2's `[in, out]` Conv1D), as the run's parameter roles say. Of k and v, `head`
        is a key-value head (grouped-query attention shares one among several query heads)."""
        heads = self._roles("heads")
        if proj not in heads:
            raise UsageError(f"proj {proj!r}: use {', '.join(heads)}")
        role, width = heads[proj], self.parameter_roles["head_dim"]
        if not 0 <= head < role["count"]:
            raise UsageError(f"head {head} out of range: {proj} of this run has {role['count']} heads")
        traj = self.trajectory(role["name"].format(layer=layer))
        start = head * role["stride"] + role["offset"]
        picked = traj.isel({traj.dims[1 + role["axis"]]: slice(start, start + width)})
        if role["axis"] != (1 if proj == "o" else 0):  # stored `[in, out]`: read as `[out, in]`
            picked = picked.transpose("step", "in", "out").rename({"in": "out", "out": "in"})
        return picked.assign_attrs(layer=layer, head=head, proj=proj)

    def neuron(self, layer: int, index: int):
        """MLP neuron `index` of `layer` across all steps, read: its weights in each projection of the MLP as
        `[step, proj, dim]`, `proj` as the run's parameter roles name them (gate, up, down for LLaMA; in, out for
        GPT-NeoX and GPT-2)."""
        import xarray as xr

        roles = self._roles("neurons")
        trajs = [self.trajectory(r["name"].format(layer=layer)) for r in roles]
        count = trajs[0].shape[1 + roles[0]["axis"]]
        if not 0 <= index < count:
            raise UsageError(f"neuron {index} out of range: the MLP of this run has {count} neurons")
        vectors = [t.isel({t.dims[1 + r["axis"]]: index}) for t, r in zip(trajs, roles)]
        vectors = [v.rename({v.dims[1]: "dim"}).drop_vars(["out", "in"], errors="ignore").load() for v in vectors]
        out = xr.concat(vectors, dim=xr.DataArray([r["proj"] for r in roles], dims="proj", name="proj"))
        mlp = roles[0]["name"].format(layer=layer).rsplit(".", 2)[0]  # `model.layers.3.mlp`
        out = out.transpose("step", "proj", "dim").rename(f"{mlp} neuron {index}")
        return out.assign_attrs(layer=layer, neuron=index)

    def stored_results(self) -> dict[str, results_io.Stored]:
        """{analysis name: its stored steps and the attributes they were computed with}."""
        return results_io.stored(self.root)

    def results_coords(self, name: str, names) -> dict[int, dict[str, str]]:
        """{step: {coordinate: text}} of the per-step text coordinates `names` of the results of `name` (the
        provenance the analysis layer records)."""
        return results_io.step_coords(self.root, name, names)

    def read_results(self, name: str):
        """The stored results of analysis `name` as a lazy `xarray.Dataset` with a `step` dimension, sorted by
        step; `MissingData` when none are stored."""
        return results_io.read(self.store, self.root, name)


class Checkpoint:
    """One committed step of a run."""

    def __init__(self, run: Run, step: int):
        self.run, self.step = run, step

    def __repr__(self) -> str:
        return f"Checkpoint(step={self.step}, run={self.run.location!r})"

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters under HF names, in their stored dtype, bit-exact."""
        return sync(self.run._params.read(self.step))

    def lazy_state_dict(self) -> dict[str, LazyTensor]:
        """`state_dict()` as `LazyTensor`s, each reading its one tensor when loaded: to move a checkpoint (export,
        repack) without holding it."""
        return sync(self.run._params.lazy(self.step))

    def optimizer_state(self, lazy: bool = False) -> dict[str, dict[str, torch.Tensor]] | None:
        """AdamW state per parameter name (`exp_avg`, `exp_avg_sq`, `step`), or None when not stored; with `lazy`,
        as `LazyTensor`s (see `lazy_state_dict`)."""
        return sync(_read_optimizer(self.run.store, self.step, lazy))

    def array(self, template: str, layers: slice = slice(None)) -> torch.Tensor:
        """One parameter by template in its stored dtype, reading only what is asked: `[layer, ...]` of
        `layers` for a `{layer}` template (one shard per layer), else the tensor."""
        arrays = self.run.parameter_arrays
        if template not in arrays:
            raise UsageError(f"no parameter {template!r} in {self.run.location}; templates: {', '.join(sorted(arrays))}")
        arr, group = arrays[template], self.run._params
        values = sync(group.read_array(arr.basename, arr.async_array, self.step, group.index(self.step), layers))
        return to_torch(values, arr.attrs["dtype"])

    def stacked(self) -> dict[str, torch.Tensor]:
        """Parameters by template in their stored dtype: `[layer, ...]` for `{layer}` names, as stored (no copy per
        layer), else the tensor."""
        return sync(self.run._params.read(self.step, stacked=True))


Run.checkpoint_type = Checkpoint


async def _read_optimizer(store, step: int, lazy: bool = False) -> dict[str, dict[str, torch.Tensor]] | None:
    from zarr.api.asynchronous import open_group

    try:
        root = await open_group(store=store, path=OPTIMIZER, mode="r", **V3)
    except FileNotFoundError:
        return None
    state: dict[str, dict[str, torch.Tensor]] = {}
    async for slot in root.group_keys():
        group = await TensorGroup.open(store, f"{OPTIMIZER}/{slot}")
        if group is None or step not in group.steps:
            continue
        for name, t in (await (group.lazy(step) if lazy else group.read(step))).items():
            state.setdefault(name, {})[slot] = t
    return state or None

