"""Expected errors of the run store, and that a refused write leaves the run as it was."""

from __future__ import annotations

import os
import re

import pytest
import torch

import workbench
from workbench.errors import IncompatibleCheckpoint, RunNotFound, StepExists, StepNotFound, WorkbenchError


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype and torch.equal(got[name], w), name


@pytest.fixture(scope="module")
def sds(hf_state_dicts):
    return hf_state_dicts((0, 10, 20))


# --- opening something that is not a run -------------------------------------------------------------


def test_open_missing_folder(tmp_path):
    with pytest.raises(RunNotFound):
        workbench.open(tmp_path / "nothing-here")


def test_open_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFound):
        workbench.open(tmp_path / "empty")


def test_open_folder_of_other_files(hf_trajectory):
    folder = hf_trajectory((0,))[0]  # an HF checkpoint folder is not a run
    with pytest.raises(RunNotFound):
        workbench.open(folder)


def test_open_icechunk_repository_that_is_not_a_workbench_run(tmp_path):
    import icechunk
    import zarr

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").attrs["something"] = "else"
    session.commit("not a run")
    with pytest.raises(RunNotFound):
        workbench.open(tmp_path / "repo")


def test_open_icechunk_repository_without_any_commit(tmp_path):
    """What `workbench.create` leaves when it dies between creating the repository and its first commit."""
    import icechunk

    icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    with pytest.raises(RunNotFound):
        workbench.open(tmp_path / "repo")


def test_errors_are_workbench_errors():
    for cls in (RunNotFound, StepNotFound, StepExists, IncompatibleCheckpoint, workbench.errors.CorruptData):
        assert issubclass(cls, WorkbenchError)


# --- missing steps -----------------------------------------------------------------------------------


def test_missing_step_names_nearest_steps(new_run, sds):
    path, writer = new_run()
    for step in (0, 10, 20):
        writer.write_checkpoint(step, sds[step])
    run = workbench.open(path)
    with pytest.raises(StepNotFound) as info:
        run.checkpoint(13)
    msg = str(info.value)
    assert "13" in msg
    named = {int(s) for s in re.findall(r"\d+", msg.split("13", 1)[1])}
    assert {10, 20} <= named  # the steps on either side of 13
    assert info.value.step == 13
    assert 10 in info.value.nearest and 20 in info.value.nearest

    with pytest.raises(StepNotFound, match="20"):
        run.checkpoint(1000)


def test_missing_step_in_a_run_without_checkpoints(new_run):
    path, _ = new_run()
    run = workbench.open(path)
    assert run.steps == []
    with pytest.raises(StepNotFound):
        run.checkpoint(0)


# --- writing an existing step ------------------------------------------------------------------------


def test_existing_step_is_refused_then_overwritten(new_run, sds):
    path, writer = new_run()
    writer.write_checkpoint(0, sds[0])
    writer.write_checkpoint(10, sds[10])
    with pytest.raises(StepExists, match="10"):
        writer.write_checkpoint(10, sds[20])
    run = workbench.open(path)
    assert run.steps == [0, 10]
    assert_same(run.checkpoint(10).state_dict(), sds[10])  # the refused write changed nothing

    writer.write_checkpoint(10, sds[20], overwrite=True)
    assert run.steps == [0, 10]  # a snapshot: unchanged until refresh
    run.refresh()
    assert run.steps == [0, 10]  # no duplicate step
    assert_same(run.checkpoint(10).state_dict(), sds[20])
    assert_same(run.checkpoint(0).state_dict(), sds[0])
    traj = run.trajectory("model.layers.{layer}.self_attn.k_proj.weight")
    assert traj["step"].values.tolist() == [0, 10]
    assert torch.equal(torch.from_numpy(traj.sel(step=10, layer=1).values),
                       sds[20]["model.layers.1.self_attn.k_proj.weight"])


def test_existing_step_is_refused_by_a_new_writer(new_run, sds):
    path, writer = new_run()
    writer.write_checkpoint(0, sds[0])
    with pytest.raises(StepExists):
        workbench.RunWriter(path).write_checkpoint(0, sds[10])
    assert_same(workbench.open(path).checkpoint(0).state_dict(), sds[0])


# --- incompatible checkpoints ------------------------------------------------------------------------


def _without(sd, *prefixes):
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


def _incompatible_variants(sd):
    wrong_shape = dict(sd)
    wrong_shape["model.layers.1.mlp.up_proj.weight"] = sd["model.layers.1.mlp.up_proj.weight"][:, :16].clone()
    all_layers_wrong = dict(sd)
    for l in range(3):
        name = f"model.layers.{l}.mlp.up_proj.weight"
        all_layers_wrong[name] = torch.cat([sd[name], sd[name]], dim=0)
    wrong_dtype = dict(sd)
    wrong_dtype["model.norm.weight"] = sd["model.norm.weight"].to(torch.float16)
    extra = dict(sd)
    extra["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(32)
    return {
        "missing-tensor": _without(sd, "model.norm.weight"),
        "missing-layer": _without(sd, "model.layers.2."),
        "missing-one-layer-of-an-array": _without(sd, "model.layers.1.self_attn.v_proj.weight"),
        "wrong-shape-one-layer": wrong_shape,
        "wrong-shape-every-layer": all_layers_wrong,
        "wrong-dtype": wrong_dtype,
        "unexpected-tensor": extra,
    }


VARIANTS = ["missing-tensor", "missing-layer", "missing-one-layer-of-an-array", "wrong-shape-one-layer",
            "wrong-shape-every-layer", "wrong-dtype", "unexpected-tensor"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_incompatible_checkpoint_after_the_first_leaves_the_run_unchanged(new_run, sds, variant):
    path, writer = new_run()
    writer.write_checkpoint(0, sds[0])
    bad = _incompatible_variants(sds[10])[variant]
    with pytest.raises(IncompatibleCheckpoint):
        writer.write_checkpoint(10, bad)
    run = workbench.open(path)
    assert run.steps == [0]
    assert_same(run.checkpoint(0).state_dict(), sds[0])
    # The writer is still usable and the refused step can be written properly afterwards.
    writer.write_checkpoint(10, sds[10])
    run.refresh()
    assert run.steps == [0, 10]
    assert_same(run.checkpoint(10).state_dict(), sds[10])


@pytest.mark.parametrize("variant", ["missing-tensor", "missing-layer", "missing-one-layer-of-an-array",
                                     "wrong-shape-one-layer", "wrong-shape-every-layer", "unexpected-tensor"])
def test_incompatible_first_checkpoint_is_refused(new_run, sds, variant):
    """The first checkpoint is checked against the model config: it must hold exactly the config's tensors."""
    path, writer = new_run()
    bad = _incompatible_variants(sds[0])[variant]
    with pytest.raises(IncompatibleCheckpoint):
        writer.write_checkpoint(0, bad)
    assert workbench.open(path).steps == []


def test_incompatible_optimizer_state_leaves_nothing_half_written(new_run, sds):
    """Parameters staged before the optimizer state is refused must not become visible."""
    path, writer = new_run()
    opt0 = {n: {"exp_avg": torch.zeros_like(t)} for n, t in sds[0].items()}
    writer.write_checkpoint(0, sds[0], optimizer_state=opt0)
    bad_opt = {n: {"exp_avg": torch.ones(3)} for n in sds[10]}
    with pytest.raises(IncompatibleCheckpoint):
        writer.write_checkpoint(10, sds[10], optimizer_state=bad_opt)
    run = workbench.open(path)
    assert run.steps == [0]
    assert run.trajectory("model.embed_tokens.weight").sizes["step"] == 1
    assert_same(run.checkpoint(0).state_dict(), sds[0])


def test_model_config_disagreeing_with_tensors_is_refused_at_first_write(new_run, sds, tiny_config):
    cfg = tiny_config.to_dict()
    cfg["hidden_size"] = 48
    path, writer = new_run(model_config=cfg)
    with pytest.raises(IncompatibleCheckpoint, match="config"):
        writer.write_checkpoint(0, sds[0])
    assert workbench.open(path).steps == []


def test_create_refuses_an_existing_run(new_run):
    path, _ = new_run()
    with pytest.raises(WorkbenchError):
        workbench.create(path, model_config={"model_type": "llama"})
    assert os.path.isdir(path)
    workbench.open(path)  # still a run
