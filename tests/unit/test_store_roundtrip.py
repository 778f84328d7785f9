"""Round trip: tensors written by transformers (safetensors) come back from the run bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
WRITE_ORDER = (20, 0, 10)  # deliberately not sorted


def assert_bit_exact(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype, f"{name}: dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"{name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        # Compare bit patterns, so that NaN payloads and -0.0 count too.
        assert torch.equal(g.view(torch.uint8) if g.ndim else g, w.view(torch.uint8) if w.ndim else w), name


@pytest.fixture(scope="module", params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def written_run(request, tmp_path_factory, tiny_config, hf_state_dicts):
    """A run holding steps 20, 0, 10 (written in that order) of one dtype, and the reference tensors."""
    dtype = request.param
    reference = hf_state_dicts(WRITE_ORDER, dtype)
    path = tmp_path_factory.mktemp("roundtrip") / "run"
    writer = workbench.create(path, model_config=tiny_config.to_dict())
    for step in WRITE_ORDER:
        writer.write_checkpoint(step, reference[step])
    return path, dtype, reference


def test_reference_has_the_requested_dtype(written_run):
    _, dtype, reference = written_run
    for sd in reference.values():
        assert {t.dtype for t in sd.values()} == {dtype}


def test_every_tensor_round_trips_bit_exact(written_run):
    path, _, reference = written_run
    run = workbench.open(path)
    assert run.steps == sorted(WRITE_ORDER)
    for step in WRITE_ORDER:
        assert_bit_exact(run.checkpoint(step).state_dict(), reference[step])


def test_parameter_names_are_the_hf_names(written_run):
    path, _, reference = written_run
    assert sorted(workbench.open(path).parameter_names()) == sorted(reference[0])


def test_model_config_is_kept(written_run, tiny_config):
    path, _, _ = written_run
    cfg = workbench.open(path).model_config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert cfg[key] == getattr(tiny_config, key)


def _expected_trajectory(reference, template: str, dtype: torch.dtype, layers: int) -> np.ndarray:
    steps = sorted(reference)
    per_step = [torch.stack([reference[s][template.format(layer=l)] for l in range(layers)]) for s in steps]
    stacked = torch.stack(per_step)  # [step, layer, out, in]
    if dtype == torch.bfloat16:
        stacked = stacked.float()  # the trajectory widens bfloat16 exactly to float32
    return stacked.numpy()


def test_trajectory_of_all_layers(written_run, tiny_config):
    path, dtype, reference = written_run
    template = "model.layers.{layer}.self_attn.q_proj.weight"
    traj = workbench.open(path).trajectory(template)
    assert traj.dims == ("step", "layer", "out", "in")
    assert traj["step"].values.tolist() == sorted(WRITE_ORDER)
    assert traj["layer"].values.tolist() == list(range(tiny_config.num_hidden_layers))
    want = _expected_trajectory(reference, template, dtype, tiny_config.num_hidden_layers)
    got = traj.values
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_a_one_layer_trajectory_reads_only_that_layer(written_run, monkeypatch):
    from workbench.store.tensors import TensorGroup

    path, _, _ = written_run
    asked = []
    read = TensorGroup.read_region

    def counting(self, name, arr, step, idx, layer, region, out):
        asked.append((step, layer))
        return read(self, name, arr, step, idx, layer, region, out)

    monkeypatch.setattr(TensorGroup, "read_region", counting)
    workbench.open(path).trajectory("model.layers.1.mlp.down_proj.weight").values
    assert sorted(asked) == [(s, 1) for s in sorted(WRITE_ORDER)]  # one read per step, of layer 1 only


def test_trajectory_of_one_layer_and_of_an_unstacked_parameter(written_run):
    path, dtype, reference = written_run
    run = workbench.open(path)
    steps = sorted(WRITE_ORDER)
    widen = (lambda t: t.float()) if dtype == torch.bfloat16 else (lambda t: t)

    one = run.trajectory("model.layers.1.mlp.down_proj.weight")
    assert one.dims == ("step", "out", "in")
    assert one["step"].values.tolist() == steps
    want = torch.stack([widen(reference[s]["model.layers.1.mlp.down_proj.weight"]) for s in steps]).numpy()
    np.testing.assert_array_equal(one.values, want)

    emb = run.trajectory("model.embed_tokens.weight")
    assert emb.dims[0] == "step" and "layer" not in emb.dims
    want = torch.stack([widen(reference[s]["model.embed_tokens.weight"]) for s in steps]).numpy()
    np.testing.assert_array_equal(emb.values, want)

    norm = run.trajectory("model.layers.{layer}.input_layernorm.weight")
    assert norm.dims[:2] == ("step", "layer") and norm.ndim == 3
    want = torch.stack([torch.stack([widen(reference[s][f"model.layers.{l}.input_layernorm.weight"])
                                     for l in range(norm.sizes["layer"])]) for s in steps]).numpy()
    np.testing.assert_array_equal(norm.values, want)


def test_trajectory_unknown_name_is_a_usage_error(written_run):
    path, _, _ = written_run
    with pytest.raises(workbench.errors.UsageError, match="q_proj"):
        workbench.open(path).trajectory("model.layers.{layer}.self_attn.q_prj.weight")


def test_zarr_layout_is_readable_without_the_workbench(written_run):
    """Any Zarr reader sees `[step, layer, out, in]` arrays with dimension names; bf16 as its bit pattern."""
    import icechunk
    import zarr

    path, dtype, reference = written_run
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    root = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")
    arr = root["params/model.layers.self_attn.q_proj.weight"]
    assert tuple(arr.metadata.dimension_names) == ("step", "layer", "out", "in")
    steps = root["params/step"][:].tolist()
    assert sorted(steps) == sorted(WRITE_ORDER)
    idx = steps.index(10)
    want = reference[10]["model.layers.2.self_attn.q_proj.weight"]
    want = want.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else want.numpy()
    got = arr[idx, 2]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_each_checkpoint_is_one_commit_tagged_by_step(new_run, hf_state_dicts):
    """Tag `step-N` points at the commit of step N; a rewritten step gets a new tag and keeps the old one."""
    import icechunk
    import zarr

    sds = hf_state_dicts((0, 10, 20))
    path, writer = new_run()
    snapshots = {step: writer.write_checkpoint(step, sds[step]) for step in (20, 0)}
    snapshots["rewrite"] = writer.write_checkpoint(20, sds[10], overwrite=True)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    tags = set(repo.list_tags())
    assert {"step-0", "step-20"} <= tags
    assert len(tags) == 3  # one more tag for the rewritten step
    assert repo.lookup_tag("step-20") == snapshots[20]
    assert repo.lookup_tag("step-0") == snapshots[0]
    (rewrite_tag,) = tags - {"step-0", "step-20"}
    assert rewrite_tag.startswith("step-20") and repo.lookup_tag(rewrite_tag) == snapshots["rewrite"]

    def q_proj_at(tag, step):
        root = zarr.open_group(repo.readonly_session(tag=tag).store, mode="r")
        idx = root["params/step"][:].tolist().index(step)
        return torch.from_numpy(root["params/model.layers.self_attn.q_proj.weight"][idx, 0])

    assert torch.equal(q_proj_at("step-20", 20), sds[20]["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(q_proj_at(rewrite_tag, 20), sds[10]["model.layers.0.self_attn.q_proj.weight"])
