"""Parameter roles: `run.head()` and `run.neuron()` on imported GPT-NeoX (fused `query_key_value`) and GPT-2
(Conv1D `c_attn`) runs equal the heads and neurons that transformers' own modeling code cuts from the same
weights, at every step, reading only the inner chunks they touch; runs that recorded no roles (made before they
were) derive them from their model config. Tiny random-init models; nothing is downloaded."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench
from tests.conftest import tiny_llama_config, wb
from workbench.errors import UsageError
from workbench.store.shards import index_size

STEPS = (0, 10, 20)
HEADS, WIDTH, HIDDEN, MLP = 4, 8, 32, 192  # an MLP of 3 blocks of 64 neurons
ARCHS = {
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        vocab_size=96, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=2, num_attention_heads=HEADS,
        max_position_embeddings=64),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=96, n_embd=HIDDEN, n_inner=MLP, n_layer=2, n_head=HEADS,
                                            n_positions=64),
}


def heads_of(arch: str, sd: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    """{proj: [head, out, in] weights} as transformers' attention cuts them (q/k/v: the head's output rows of a
    linear map, o: the head's input columns of the output projection)."""
    if arch == "gpt_neox":  # GPTNeoXAttention: qkv(x).view(..., heads, 3 * head_size).chunk(3, dim=-1)
        qkv = sd[f"gpt_neox.layers.{layer}.attention.query_key_value.weight"].view(HEADS, 3 * WIDTH, HIDDEN)
        q, k, v = qkv.chunk(3, dim=1)
        o = sd[f"gpt_neox.layers.{layer}.attention.dense.weight"].view(HIDDEN, HEADS, WIDTH).permute(1, 0, 2)
    else:  # GPT2Attention: c_attn(x).split(embed_dim, dim=2), each .view(..., heads, head_dim); Conv1D is x @ W
        q, k, v = (w.view(HIDDEN, HEADS, WIDTH).permute(1, 2, 0)
                   for w in sd[f"transformer.h.{layer}.attn.c_attn.weight"].split(HIDDEN, dim=1))
        o = sd[f"transformer.h.{layer}.attn.c_proj.weight"].view(HEADS, WIDTH, HIDDEN).transpose(1, 2)
    return {"q": q, "k": k, "v": v, "o": o}


def neuron_of(arch: str, sd: dict[str, torch.Tensor], layer: int, i: int) -> torch.Tensor:
    """[proj=(in, out), dim]: the weights into neuron `i` of the MLP and out of it."""
    if arch == "gpt_neox":
        w_in, w_out = (sd[f"gpt_neox.layers.{layer}.mlp.{n}.weight"] for n in ("dense_h_to_4h", "dense_4h_to_h"))
        return torch.stack([w_in[i], w_out[:, i]])
    w_in, w_out = (sd[f"transformer.h.{layer}.mlp.{n}.weight"] for n in ("c_fc", "c_proj"))
    return torch.stack([w_in[:, i], w_out[i]])


@pytest.fixture(scope="module", params=list(ARCHS))
def imported(request, tmp_path_factory):
    """(arch, {step: state dict}, run) of one model per step imported with `wb import hf`."""
    root = tmp_path_factory.mktemp(request.param)
    states = {}
    for step in STEPS:
        torch.manual_seed(step)
        model = transformers.AutoModelForCausalLM.from_config(ARCHS[request.param]())
        model.save_pretrained(root / "src" / f"step{step}")
        states[step] = {k: v.clone() for k, v in model.state_dict().items()}
    code, out = wb("import", "hf", root / "src", "--out", root / "run")
    assert code == 0, out
    return request.param, states, workbench.open(root / "run")


@pytest.mark.parametrize("proj,head", [("q", 0), ("k", 3), ("v", 1), ("o", 2)])
def test_a_head_equals_transformers_cut_and_reads_only_its_chunk(imported, counted, proj, head):
    arch, states, run = imported
    got = run.head(1, head, proj)
    assert counted["requests"] == 0  # lazy until values are asked for
    assert got.dims == ("step", "out", "in") and got["step"].values.tolist() == list(STEPS)
    want = np.stack([heads_of(arch, states[s], 1)[proj][head].numpy() for s in STEPS])
    np.testing.assert_array_equal(got.values, want)
    template = run.parameter_roles["heads"][proj]["name"]
    shape = tuple(run.parameter_arrays[template].shape[2:])
    axis = run.parameter_roles["heads"][proj]["axis"]
    inner = tuple(WIDTH if a == axis else n for a, n in enumerate(shape))
    assert counted["requests"] == 2 * len(STEPS)  # the shard index, then the head's one inner chunk, per step
    assert counted["bytes"] == len(STEPS) * (index_size(shape, inner) + want[0].nbytes + 4)


def test_a_neuron_equals_the_mlp_weights_and_reads_one_block_of_each(imported, counted):
    arch, states, run = imported
    got = run.neuron(0, 70)  # in the second block of 64
    assert got.dims == ("step", "proj", "dim") and got["proj"].values.tolist() == ["in", "out"]
    want = np.stack([neuron_of(arch, states[s], 0, 70).numpy() for s in STEPS])
    np.testing.assert_array_equal(got.values, want)
    block = (64 * HIDDEN) * 4 + 4
    assert counted["requests"] == 2 * 2 * len(STEPS)
    assert counted["bytes"] == 2 * len(STEPS) * (index_size((MLP, HIDDEN), (64, HIDDEN)) + block)


def test_roles_are_recorded_and_indexes_checked(imported):
    arch, _, run = imported
    assert run.attrs["parameter_roles"] == run.parameter_roles and run.parameter_roles["head_dim"] == WIDTH
    with pytest.raises(UsageError, match="4 heads"):
        run.head(0, HEADS, "k")
    with pytest.raises(UsageError, match=f"{MLP} neurons"):
        run.neuron(1, MLP)
    with pytest.raises(UsageError, match="layer 2 out of range"):
        run.head(2, 0, "q")


def test_a_run_without_recorded_roles_derives_them_from_its_config(tmp_path):
    """As runs made before roles were recorded: the store's reader says so; `workbench.open` derives them."""
    from workbench import store

    config = tiny_llama_config()
    model = transformers.LlamaForCausalLM(config)
    store.create(tmp_path / "old", config.to_dict()).write_checkpoint(0, model.state_dict())
    with pytest.raises(UsageError, match="records no heads"):
        store.Run(tmp_path / "old").head(0, 0, "q")
    run = workbench.open(tmp_path / "old")
    assert "parameter_roles" not in run.attrs or run.attrs["parameter_roles"] is None
    np.testing.assert_array_equal(run.head(0, 1, "k").values[0],
                                  model.state_dict()["model.layers.0.self_attn.k_proj.weight"][8:16].numpy())
    np.testing.assert_array_equal(run.neuron(1, 5).values[0, 2],
                                  model.state_dict()["model.layers.1.mlp.down_proj.weight"][:, 5].numpy())
    code, out = wb("repack", tmp_path / "old", "--out", tmp_path / "new")  # records the derived roles
    assert code == 0, out
    new = workbench.open(tmp_path / "new")
    assert new.attrs["parameter_roles"] == run.parameter_roles
    assert new.parameter_arrays["model.layers.{layer}.self_attn.q_proj.weight"].chunks[2:] == (8, 32)


def test_an_architecture_without_roles_says_so(tmp_path):
    config = {"model_type": "unknown-arch", "hidden_size": 4}
    workbench.create(tmp_path / "run", config).write_checkpoint(0, {"w.weight": torch.zeros(4, 4)})
    run = workbench.open(tmp_path / "run")
    for read in (lambda: run.head(0, 0, "q"), lambda: run.neuron(0, 0)):
        with pytest.raises(UsageError, match="unknown-arch") as e:
            read()
        assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("config", [
    transformers.LlamaConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=16),
    transformers.MistralConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2),
    transformers.Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=1),
    ARCHS["gpt_neox"](), ARCHS["gpt2"]()], ids=lambda c: c.model_type)
def test_roles_name_the_models_parameters_and_tile_their_axes(config):
    """Every role's parameter is the model's, its heads fill the head axis (q, k, v of a fused matrix together) and
    its neurons are the MLP's width."""
    from workbench.models.roles import parameter_roles

    config.num_hidden_layers, config.vocab_size = 1, 16
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    roles = parameter_roles(config.to_dict())
    width, covered = roles["head_dim"], {}
    for proj, role in roles["heads"].items():
        starts = [h * role["stride"] + role["offset"] for h in range(role["count"])]
        covered.setdefault((role["name"], role["axis"]), []).extend(range(s, s + width) for s in starts)
    for (name, axis), ranges in covered.items():
        indices = sorted(i for r in ranges for i in r)
        assert indices == list(range(shapes[name.format(layer=0)][axis])), name
    neurons = {shapes[n["name"].format(layer=0)][n["axis"]] for n in roles["neurons"]}
    assert neurons == {getattr(config, "intermediate_size", None) or config.n_inner or 4 * config.hidden_size}
