"""Parameter roles: which axis of which parameter holds attention heads and MLP neurons, by architecture.

`parameter_roles` is what the store takes when a run is created (`create(..., roles=parameter_roles(config))`),
as it takes `config_check.check_against_config`: the store records the roles, cuts those axes into inner chunks
and reads `Run.head` / `Run.neuron` through them, knowing no model itself. Layouts as transformers' modeling code
cuts them: LLaMA's `q/k/v/o_proj` and `gate/up/down_proj` (Mistral and Qwen2 name them alike); GPT-NeoX's fused
`query_key_value`, whose rows are `[head, (q, k, v), head_dim]`; GPT-2's Conv1D weights, stored `[in, out]`,
whose `c_attn` columns are `[(q, k, v), head, head_dim]`.
"""

from __future__ import annotations

from workbench.store.layout import head_role, neuron_role

LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def parameter_roles(model_config: dict) -> dict | None:
    """The roles of the parameters of the model an HF config dict describes; None for an architecture not known
    here, or a config that does not give its heads (such runs store every matrix in blocks of rows and have no
    `head` or `neuron`)."""
    model_type = model_config.get("model_type")
    fields = ("n_embd", "n_head") if model_type == "gpt2" else ("hidden_size", "num_attention_heads")
    hidden, heads = (model_config.get(f) for f in fields)
    if not hidden or not heads:
        return None
    if model_type in LLAMA_FAMILY:
        from training.model import parameter_roles as llama_roles  # imports torch: only for the LLaMA family

        width = model_config.get("head_dim") or hidden // heads
        return llama_roles(heads, model_config.get("num_key_value_heads") or heads, width)
    if model_type == "gpt_neox":
        return _gpt_neox(heads, hidden // heads)
    if model_type == "gpt2":
        return _gpt2(heads, hidden // heads)
    return None


def _gpt_neox(heads: int, width: int) -> dict:
    """GPTNeoXAttention: `query_key_value(x).view(..., heads, 3 * head_size).chunk(3)`; `dense` takes the heads'
    outputs concatenated; the MLP is `dense_h_to_4h` (a neuron's row) then `dense_4h_to_h` (its column)."""
    layer = "gpt_neox.layers.{layer}"
    qkv = f"{layer}.attention.query_key_value.weight"
    return {"head_dim": width,
            "heads": {**{p: head_role(qkv, 0, heads, 3 * width, i * width) for i, p in enumerate("qkv")},
                      "o": head_role(f"{layer}.attention.dense.weight", 1, heads, width)},
            "neurons": [neuron_role("in", f"{layer}.mlp.dense_h_to_4h.weight", 0),
                        neuron_role("out", f"{layer}.mlp.dense_4h_to_h.weight", 1)]}


def _gpt2(heads: int, width: int) -> dict:
    """GPT2Attention: `c_attn(x).split(hidden)` into q, k, v, each `.view(..., heads, head_dim)`; Conv1D weights
    are `[in, out]`, so heads are columns of `c_attn` and rows of `c_proj`, and a neuron is a column of `c_fc`
    and a row of the MLP's `c_proj`."""
    layer = "transformer.h.{layer}"
    qkv = f"{layer}.attn.c_attn.weight"
    return {"head_dim": width,
            "heads": {**{p: head_role(qkv, 1, heads, width, i * heads * width) for i, p in enumerate("qkv")},
                      "o": head_role(f"{layer}.attn.c_proj.weight", 0, heads, width)},
            "neurons": [neuron_role("in", f"{layer}.mlp.c_fc.weight", 1),
                        neuron_role("out", f"{layer}.mlp.c_proj.weight", 0)]}
