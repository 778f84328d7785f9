"""Partial reads of the sharded layout: a selection of a trajectory reads only the inner chunks it needs,
counted in bytes the store returns; the head and neuron helpers; format-1 runs still read; `wb repack`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import workbench
from tests.conftest import seeded_model, tiny_llama_config, wb
from training.model import parameter_roles
from workbench.store import Layout
from workbench.store.shards import index_size

STEPS = (0, 10, 20)
# 4 query heads and 2 key-value heads of width 8; an MLP of 192 neurons: 3 blocks of 64.
CONFIG = tiny_llama_config(intermediate_size=192)
HEAD = 8


def reference(step: int) -> dict[str, torch.Tensor]:
    return seeded_model(CONFIG, step).state_dict()


def write_run(path, layout: Layout = Layout(), steps=STEPS):
    writer = workbench.create(path, model_config=CONFIG.to_dict(), layout=layout)
    for step in steps:
        writer.write_checkpoint(step, reference(step))
    return workbench.open(path)


@pytest.fixture(scope="module")
def refs():
    return {s: reference(s) for s in STEPS}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("sharded") / "run")


@pytest.mark.parametrize("proj,head,rows", [("q", 2, True), ("k", 1, True), ("v", 0, True), ("o", 3, False)])
def test_one_head_across_steps_reads_that_heads_chunks_and_the_index(sharded, refs, counted, proj, head, rows):
    got = sharded.head(1, head, proj)
    assert got.dims == ("step", "out", "in") and got["step"].values.tolist() == list(STEPS)
    block = slice(head * HEAD, (head + 1) * HEAD)
    want = [refs[s][f"model.layers.1.self_attn.{proj}_proj.weight"] for s in STEPS]
    want = np.stack([(w[block] if rows else w[:, block]).numpy() for w in want])
    np.testing.assert_array_equal(got.values, want)
    shape = tuple(refs[0][f"model.layers.1.self_attn.{proj}_proj.weight"].shape)
    inner = (HEAD, shape[1]) if rows else (shape[0], HEAD)
    asked = want[0].nbytes
    assert counted["requests"] == 2 * len(STEPS)  # the index, then the head's one inner chunk, per step
    assert counted["bytes"] == len(STEPS) * (index_size(shape, inner) + asked + 4)  # + the chunk's crc32c


def test_one_neuron_reads_one_block_of_each_mlp_matrix(sharded, refs, counted):
    got = sharded.neuron(0, 70)  # in the second block of 64
    assert got.dims == ("step", "proj", "dim") and got["proj"].values.tolist() == ["gate", "up", "down"]
    names = {p: f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    want = np.stack([np.stack([refs[s][names["gate"]][70].numpy(), refs[s][names["up"]][70].numpy(),
                               refs[s][names["down"]][:, 70].numpy()]) for s in STEPS])
    np.testing.assert_array_equal(got.values, want)
    hidden = CONFIG.hidden_size
    block = 64 * hidden * 4 + 4
    assert counted["requests"] == 3 * 2 * len(STEPS)
    assert counted["bytes"] == 3 * len(STEPS) * (index_size((192, hidden), (64, hidden)) + block)


def test_selections_of_a_trajectory_equal_numpy_on_the_whole(sharded, refs, counted):
    name = "model.layers.{layer}.mlp.down_proj.weight"
    whole = np.stack([np.stack([refs[s][name.format(layer=l)].numpy() for l in range(3)]) for s in STEPS])
    traj = sharded.trajectory(name)
    assert counted["requests"] == 0  # nothing is read before values are asked for
    cases = [dict(step=[2, 0]), dict(layer=1, out=slice(3, 9)), dict(step=1, layer=[2, 0], **{"in": [191, 5, 64]}),
             dict(out=-1), dict(step=slice(None, None, 2), **{"in": slice(60, 70)})]
    for case in cases:
        key = tuple(case.get(d, slice(None)) for d in traj.dims)
        outer = tuple(np.atleast_1d(np.arange(n)[k]) for k, n in zip(key, whole.shape))
        want = whole[np.ix_(*outer)].reshape([len(o) for o, k in zip(outer, key) if not isinstance(k, int)])
        np.testing.assert_array_equal(traj.isel(case).values, want, err_msg=str(case))
    one = traj.sel(step=10).isel(layer=2, out=0)
    counted["requests"] = 0
    np.testing.assert_array_equal(one.values, refs[10]["model.layers.2.mlp.down_proj.weight"][0].numpy())
    assert counted["requests"] == 1  # one step, one layer; a row touches every column block: the shard at once


def test_head_and_neuron_reject_what_the_run_does_not_have(sharded):
    with pytest.raises(workbench.errors.UsageError, match="4 heads"):
        sharded.head(0, 4, "q")
    with pytest.raises(workbench.errors.UsageError, match="2 heads"):
        sharded.head(0, 2, "k")
    with pytest.raises(workbench.errors.UsageError, match="proj 'x'"):
        sharded.head(0, 0, "x")
    with pytest.raises(workbench.errors.UsageError, match="192 neurons"):
        sharded.neuron(0, 192)


def test_a_format_1_run_reads_the_same_selections(tmp_path, sharded):
    old = write_run(tmp_path / "old", Layout(sharded=False, compression="lz4"))
    assert old.layout == Layout(sharded=False, compression="lz4")
    xr.testing.assert_identical(old.head(2, 1, "o").load(), sharded.head(2, 1, "o").load())
    xr.testing.assert_identical(old.neuron(1, 100), sharded.neuron(1, 100))
    name = "model.layers.{layer}.self_attn.q_proj.weight"
    xr.testing.assert_identical(old.trajectory(name).isel(layer=[2, 0], out=slice(5, 12)).load(),
                                sharded.trajectory(name).isel(layer=[2, 0], out=slice(5, 12)).load())


def _everything(run) -> dict:
    """What a run holds, apart from its layout: tensors of every step, optimizer state, tables, results."""
    out = {"steps": run.steps, "config": run.model_config, "train": run.train_config,
           "tokenizer": run.tokenizer.to_str() if run.tokenizer else None,
           "tables": {p: run.table(p) for p in ("metrics", "data/order", "data/documents", "data/facts")}}
    for step in run.steps:
        out[step] = run.checkpoint(step).state_dict(), run.checkpoint(step).optimizer_state()
    out["results"] = {name: run.results(name).load() for name in run.stored_results()}
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(key, int):
            (sd_a, opt_a), (sd_b, opt_b) = a[key], b[key]
            assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[n], sd_b[n]) for n in sd_a)
            assert (opt_a is None) == (opt_b is None)
            for n in opt_a or {}:
                assert all(torch.equal(opt_a[n][s], opt_b[n][s]) for s in opt_a[n])
        elif key == "tables":
            for path, table in a[key].items():
                assert (table is None) == (b[key][path] is None), path
                if table is not None:  # columns in name order: zarr lists a group's arrays in no fixed order
                    assert table.sort_index(axis=1).equals(b[key][path].sort_index(axis=1)), path
        elif key == "results":
            assert a[key].keys() == b[key].keys()
            for name in a[key]:
                xr.testing.assert_identical(a[key][name], b[key][name])
        else:
            assert a[key] == b[key], key


def test_repack_rewrites_a_trained_and_analysed_run_bit_exact(analysed_run, tmp_path, monkeypatch):
    from workbench.store.tensors import TensorGroup

    source = workbench.open(analysed_run)
    assert source.layout.sharded and source.layout.compression == "none"
    with monkeypatch.context() as m:  # tensor by tensor: no whole checkpoint is ever read
        m.setattr(TensorGroup, "read", lambda *a, **k: pytest.fail("repack read a whole checkpoint"))
        code, out = wb("repack", analysed_run, "--out", tmp_path / "whole", "--whole-tensors", "--compression", "lz4")
    assert code == 0, out
    whole = workbench.open(tmp_path / "whole")
    assert whole.layout == Layout(sharded=False, compression="lz4")
    arr = whole.parameter_arrays["model.layers.{layer}.mlp.up_proj.weight"]
    assert arr.shards is None and arr.chunks[2:] == arr.shape[2:]
    code, out = wb("repack", tmp_path / "whole", "--out", tmp_path / "back")
    assert code == 0, out
    back = workbench.open(tmp_path / "back")
    arr = back.parameter_arrays["model.layers.{layer}.mlp.up_proj.weight"]
    assert back.layout == Layout() and arr.shards[2:] == arr.shape[2:] and arr.chunks[2] == 64
    expected = _everything(source)
    _assert_same(expected, _everything(whole))
    _assert_same(expected, _everything(back))
    assert back.attrs["workbench"]["repacked"]["from"] == str(tmp_path / "whole")
    trained = source.model_config  # the trainer records its model's roles; repack copies them
    assert back.attrs["parameter_roles"] == whole.attrs["parameter_roles"] == source.attrs["parameter_roles"] == (
        parameter_roles(trained["num_attention_heads"], trained["num_key_value_heads"], trained["head_dim"]))
    assert sorted(back.repo.list_tags()) == sorted(f"step-{s}" for s in source.steps)
    code, out = wb("info", tmp_path / "whole")
    assert "whole tensors, compression lz4" in out


@pytest.mark.parametrize("args,words", [
    (["{run}", "--out", "{run}"], ["already holds a run"]),
    (["{tmp}/missing", "--out", "{tmp}/new"], ["is not a run"]),
    (["{run}", "--out", "{tmp}/new", "--compression", "zstd"], ["zstd", "none, lz4"]),
])
def test_repack_bad_input_is_one_line_and_writes_nothing(sharded, tmp_path, args, words):
    names = {"run": sharded.location, "tmp": tmp_path}
    code, out = wb("repack", *[a.format(**names) for a in args])
    assert code == 2 and out.startswith("error: ") and len(out.strip().splitlines()) == 1, out
    assert all(w.format(**names) in out for w in words), out
    assert not (tmp_path / "new").exists()


def test_new_runs_split_their_manifests_along_step(sharded):
    import icechunk

    from workbench.store.storage import STEPS_PER_MANIFEST, storage_for

    config = icechunk.Repository.open(storage_for(sharded.location)).config  # as saved with the repository
    assert "DimensionName(\"step\"), " + str(STEPS_PER_MANIFEST) in repr(config.manifest.splitting)
