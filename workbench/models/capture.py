"""Activations of any checkpoint under TransformerLens hook names: one function for every architecture.

`capture(source, input_ids, names)` runs one forward pass and returns `(logits, {name: tensor})`. For the
workbench's LLaMA (a run whose config the in-repo model implements, or a `training.model.Llama`) it runs the
in-repo model with its `Capture`; for any other architecture (a run imported from HF folders, or a
transformers model) it runs the transformers model with forward hooks, so the forward-pass analyses (loss,
activations, lenses) work on GPT-NeoX, GPT-2 and OLMo trajectories as on ours.

Hooks by architecture (`{l}` is the layer; `available_hooks(source)` lists them for one model):

| hook | in-repo LLaMA | llama, mistral, qwen2, olmo, olmo2 | gpt2 | gpt_neox |
|---|---|---|---|---|
| `hook_embed` (token embedding) | yes | yes | yes | yes |
| `hook_pos_embed` (learned positions) | - | - | yes | - |
| `blocks.{l}.hook_resid_pre`, `blocks.{l}.hook_resid_post` | yes | yes | yes | yes |
| `blocks.{l}.attn.hook_pattern` `[batch, head, query, key]` | yes | yes | yes | yes |
| `blocks.{l}.hook_attn_out`, `blocks.{l}.hook_mlp_out` | yes | yes | yes | yes |
| `blocks.{l}.hook_resid_mid` | yes | yes | yes | sequential only (`use_parallel_residual=False`) |
| `blocks.{l}.mlp.hook_pre` (input of the activation function; the gate for gated MLPs) | yes | yes | yes | yes |
| `blocks.{l}.mlp.hook_post` (input of the MLP's output projection) | yes | yes | yes | yes |
| `ln_final.hook_normalized` (final norm before its weight and bias) | yes | yes | yes | yes |

The in-repo LLaMA also has `blocks.{l}.ln1.hook_normalized` and `blocks.{l}.ln2.hook_normalized`.

Semantics follow TransformerLens: `hook_resid_pre` of layer 0 is the sum of the embeddings (token plus, for
GPT-2, position); `hook_attn_out` and `hook_mlp_out` are what each sublayer adds to the residual stream (for
OLMo 2, after its post-sublayer norm); `ln_final.hook_normalized` is `x / rms(x)` for RMSNorm models and
`(x - mean) / std` for LayerNorm models. Patterns are the attention weights each attention module returns
under eager attention, so the generic path switches a model to eager attention while they are asked for.

With `fn`, each activation is handed to `fn(name, tensor)` as the pass produces it (on the generic path, from
forward hooks of the modules) and nothing is kept: the way to feed running statistics without holding a
whole model's activations (`workbench.analysis`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workbench.errors import IncompatibleCheckpoint, UsageError


@dataclass(frozen=True)
class Layout:
    """Where the TransformerLens hook points sit in one transformers architecture (dotted module paths)."""

    layers: str  # the ModuleList of blocks
    attn: str  # per block: the attention module; under eager attention its output is (output, pattern)
    attn_out: str  # per block: the module whose output (first element) the block adds as attention output
    mlp_out: str  # per block: the module whose output the block adds as MLP output
    mlp_act: str  # per block: the MLP's activation function module; its input is mlp.hook_pre
    mlp_down: str  # per block: the MLP's output projection; its input is mlp.hook_post
    final_norm: str
    norm: str  # "rms" or "ln": how ln_final.hook_normalized is computed
    pos_embed: str | None = None
    parallel: str | None = None  # config flag that makes attention and MLP read the same residual


_LLAMA_LIKE = Layout("model.layers", "self_attn", "self_attn", "mlp", "mlp.act_fn", "mlp.down_proj", "model.norm", "rms")
LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "olmo": Layout("model.layers", "self_attn", "self_attn", "mlp", "mlp.act_fn", "mlp.down_proj", "model.norm", "ln"),
    "olmo2": Layout("model.layers", "self_attn", "post_attention_layernorm", "post_feedforward_layernorm",
                    "mlp.act_fn", "mlp.down_proj", "model.norm", "rms"),
    "gpt2": Layout("transformer.h", "attn", "attn", "mlp", "mlp.act", "mlp.c_proj", "transformer.ln_f", "ln",
                   pos_embed="transformer.wpe"),
    "gpt_neox": Layout("gpt_neox.layers", "attention", "attention", "mlp", "mlp.act", "mlp.dense_4h_to_h",
                       "gpt_neox.final_layer_norm", "ln", parallel="use_parallel_residual"),
}

BLOCK_HOOKS = ("hook_resid_pre", "attn.hook_pattern", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post",
               "hook_mlp_out", "hook_resid_post")


def capture(source, input_ids: torch.Tensor, names: Iterable[str] | str = (), fn=None, logits: bool = True
            ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """One forward pass of `input_ids` `[batch, pos]`: logits `[batch, pos, vocab]` and the activations
    named in `names` (TransformerLens hook names; a name with `{l}` stands for every layer). With `fn`, the
    activations go to `fn(name, tensor)` instead and the dict comes back empty. `logits=False` skips the
    unembedding (None comes back): for activations only, it saves vocab × d_model per token.

    `source` is a `Checkpoint`, a `training.model.Llama` or a transformers causal LM. A checkpoint is opened
    for this one call (`open_model`: the in-repo LLaMA for the workbench's runs, the transformers model
    otherwise); open the model once and pass it when capturing many batches.
    """
    model = _model_of(source)
    input_ids = torch.as_tensor(input_ids)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2:
        raise UsageError(f"input_ids must be [batch, pos], got shape {list(input_ids.shape)}")
    wanted = _expand([names] if isinstance(names, str) else list(names), available_hooks(model), n_layers(model))
    input_ids = input_ids.to(_device_of(model))
    cache: dict[str, torch.Tensor] = {}
    sink = fn if fn is not None else (lambda name, x: cache.__setitem__(name, x.detach()))
    with torch.no_grad():
        if _is_llama(model):
            with model.hooks(wanted, sink):
                out = model(input_ids) if logits else model.hidden_states(input_ids)
        else:
            out = _hf_capture(model, input_ids, wanted, sink, logits)
    return (out if logits else None), {n: cache[n] for n in wanted if n in cache}


def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation `[batch, pos]` -> `[batch, pos + max_new_tokens]` of a model `capture` runs: the
    in-repo LLaMA's own `generate`, or a loop over the transformers model that unembeds the last position only."""
    if _is_llama(model):
        return model.generate(input_ids, max_new_tokens)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            last = model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[:, -1]  # [batch, vocab]
            input_ids = torch.cat([input_ids, last.argmax(-1, keepdim=True)], 1)
    return input_ids


def continuation_logprobs(model: torch.nn.Module, context: Sequence[int], continuations: Sequence[Sequence[int]]
                          ) -> list[np.ndarray]:
    """The log-probability of every token of each continuation after `context` (one float64 array per
    continuation): the context encoded once into a KV cache, the continuations batched on top of it (right-padded:
    causal attention never looks at the padding)."""
    device = _device_of(model)
    ctx = torch.as_tensor([list(context)], dtype=torch.int64, device=device)
    n, width = len(continuations), max(len(c) for c in continuations)
    conts = torch.zeros(n, width, dtype=torch.int64, device=device)
    for i, c in enumerate(continuations):
        conts[i, : len(c)] = torch.as_tensor(list(c))
    with torch.no_grad():
        if _is_llama(model):
            from training.model import KVCache

            cache = KVCache()
            first = model.lm_head(model.hidden_states(ctx, cache)[:, -1])  # [1, vocab]: the first continuation token
            rest = model(conts, cache=cache.expand(n))  # [n, width, vocab]
        else:
            out = model(input_ids=ctx, use_cache=True)
            first, cache = out.logits[:, -1], out.past_key_values
            cache.batch_repeat_interleave(n)
            rest = model(input_ids=conts, past_key_values=cache, use_cache=True).logits
        logp = torch.cat([first.expand(n, -1)[:, None], rest[:, :-1]], 1).double().log_softmax(-1)  # position i predicts token i
        picked = logp.gather(-1, conts[..., None])[..., 0].cpu().numpy()  # [n, width]
    return [picked[i, : len(c)] for i, c in enumerate(continuations)]


def open_model(checkpoint, device=None, dtype=None) -> torch.nn.Module:
    """The model `capture` runs for a checkpoint: the in-repo LLaMA when it implements the run's config,
    else the transformers model."""
    from workbench.models.views import hf_model, llama, llama_unsupported

    if llama_unsupported(checkpoint.run.model_config) is None:
        return llama(checkpoint, device=device, dtype=dtype)
    _layout(checkpoint.run.model_config.get("model_type"))  # fail before reading any tensor
    return hf_model(checkpoint, device=device, dtype=dtype)


def unembed(model: torch.nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """Logits of a residual stream `[..., d_model]` read out through the model's final norm and unembedding
    (the logit lens; applied to the last block's output it gives the model's own logits)."""
    with torch.no_grad():
        if _is_llama(model):
            return model.lm_head(model.model.norm(resid))
        norm = _module(model, _layout(model.config.model_type).final_norm)
        return model.get_output_embeddings()(norm(resid))


def available_hooks(source) -> list[str]:
    """The hook names `capture` can return for `source` (a checkpoint or a model), with `{l}` for every layer."""
    model = source if _is_model(source) else None
    if model is None:
        return _available_for_config(source.run.model_config)
    if _is_llama(model):
        from training.model import HOOKS

        return list(HOOKS)
    return _available_for_layout(_layout(model.config.model_type), model.config)


def _available_for_config(config: dict) -> list[str]:
    from workbench.models.views import hf_config, llama_unsupported

    if llama_unsupported(config) is None:
        from training.model import HOOKS

        return list(HOOKS)
    return _available_for_layout(_layout(config.get("model_type")), hf_config(config))


def _available_for_layout(layout: Layout, config) -> list[str]:
    names = ["hook_embed"] + (["hook_pos_embed"] if layout.pos_embed else [])
    parallel = bool(layout.parallel and getattr(config, layout.parallel, False))
    names += [f"blocks.{{l}}.{h}" for h in BLOCK_HOOKS if not (parallel and h == "hook_resid_mid")]
    return names + ["ln_final.hook_normalized"]


def _layout(model_type: str | None) -> Layout:
    if model_type not in LAYOUTS:
        raise IncompatibleCheckpoint(f"no activation capture for model_type {model_type!r}; supported: "
                                     f"{', '.join(sorted(LAYOUTS))} (plus the in-repo LLaMA)")
    return LAYOUTS[model_type]


# ---------------------------------------------------------------------------------------------- dispatch

def _is_llama(model) -> bool:
    from training.model import Llama

    return isinstance(model, Llama)


def _is_model(source) -> bool:
    return isinstance(source, torch.nn.Module)


def _model_of(source):
    if _is_model(source):
        if _is_llama(source):
            return source.eval()
        if not hasattr(source, "config") or not hasattr(source.config, "model_type"):
            raise UsageError(f"capture takes a Checkpoint, a training.model.Llama or a transformers model, "
                             f"not {type(source).__name__}")
        return source.eval()
    from workbench.store.run import Checkpoint

    if not isinstance(source, Checkpoint):
        raise UsageError(f"capture takes a Checkpoint, a training.model.Llama or a transformers model, "
                         f"not {type(source).__name__}")
    return open_model(source)


def n_layers(model) -> int:
    if _is_llama(model):
        return model.config.num_hidden_layers
    return len(_module(model, _layout(model.config.model_type).layers))


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _expand(names: list[str], available: list[str], count: int) -> list[str]:
    """Hook names with `{l}` expanded to every layer, each checked against what the model offers."""
    out: list[str] = []
    for name in names:
        template = re.sub(r"^blocks\.(\d+)\.", "blocks.{l}.", name)
        if template not in available:
            raise UsageError(f"no hook {name!r} for this model; available: {', '.join(available)}")
        if template == name and "{l}" in name:
            out += [name.format(l=l) for l in range(count)]
        else:
            m = re.match(r"^blocks\.(\d+)\.", name)
            if m and int(m[1]) >= count:
                raise UsageError(f"{name!r}: layer {m[1]} out of range, the model has {count} layers")
            out.append(name)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------- generic path

def _module(model, path: str) -> torch.nn.Module:
    return model.get_submodule(path)


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _hf_capture(model, input_ids: torch.Tensor, wanted: list[str], sink, logits: bool):
    """The transformers model's forward pass (its output, or the backbone's without `logits`), each wanted
    activation handed to `sink` from a forward hook as its module runs."""
    layout = _layout(model.config.model_type)
    wanted_set = set(wanted)
    mids = {int(n.split(".")[1]) for n in wanted if n.endswith("hook_resid_mid")}
    pending: dict[int, torch.Tensor] = {}  # resid_pre of a layer whose resid_mid is wanted, until attn_out comes

    def emit(name: str, x: torch.Tensor) -> None:
        if name in wanted_set:
            sink(name, x)

    def resid_pre(l: int, x: torch.Tensor) -> None:
        if l in mids:
            pending[l] = x
        emit(f"blocks.{l}.hook_resid_pre", x)

    def attn_out(l: int, x: torch.Tensor) -> None:
        emit(f"blocks.{l}.hook_attn_out", x)
        if l in mids:  # resid_mid = resid_pre + attn_out
            emit(f"blocks.{l}.hook_resid_mid", pending.pop(l) + x)

    handles: list = []

    def listen(module: torch.nn.Module, get, callback, pre: bool = False) -> None:
        if pre:
            handles.append(module.register_forward_pre_hook(lambda m, args, kwargs: callback(get(args, kwargs)),
                                                            with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out: callback(get(out))))

    def needs(*names: str) -> bool:
        return any(n in wanted_set for n in names)

    patterns = any(n.endswith("attn.hook_pattern") for n in wanted)
    restore = _eager(model) if patterns else None
    try:
        if needs("hook_embed"):
            listen(model.get_input_embeddings(), _first, lambda x: emit("hook_embed", x))
        if layout.pos_embed and needs("hook_pos_embed"):
            listen(_module(model, layout.pos_embed), _first, lambda x: emit("hook_pos_embed", x))
        for l, block in enumerate(_module(model, layout.layers)):
            p = f"blocks.{l}."
            if needs(p + "hook_resid_pre") or l in mids:
                listen(block, _hidden_arg, lambda x, l=l: resid_pre(l, x), pre=True)  # [batch, pos, d_model]
            if needs(p + "attn.hook_pattern"):
                listen(block.get_submodule(layout.attn), lambda out: out[1],  # [batch, head, query, key]
                       lambda x, n=p + "attn.hook_pattern": emit(n, x))
            if needs(p + "hook_attn_out") or l in mids:
                listen(block.get_submodule(layout.attn_out), _first, lambda x, l=l: attn_out(l, x))
            for path, hook, pre in ((layout.mlp_act, "mlp.hook_pre", True), (layout.mlp_down, "mlp.hook_post", True),
                                    (layout.mlp_out, "hook_mlp_out", False)):
                if needs(p + hook):
                    listen(block.get_submodule(path), _hidden_arg if pre else _first,
                           lambda x, n=p + hook: emit(n, x), pre=pre)
            if needs(p + "hook_resid_post"):
                listen(block, _first, lambda x, n=p + "hook_resid_post": emit(n, x))
        if needs("ln_final.hook_normalized"):
            final = _module(model, layout.final_norm)
            eps = _eps(final)
            listen(final, lambda args, kwargs: _normalize(_hidden_arg(args, kwargs), layout.norm, eps),
                   lambda x: emit("ln_final.hook_normalized", x), pre=True)
        runner = model if logits else model.base_model  # the backbone: every hooked module, no unembedding
        out = runner(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        if restore is not None:
            model.set_attn_implementation(restore)
    return out.logits if logits else None


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values())) if len(kwargs) == 1 else kwargs["hidden_states"]


def _eps(norm: torch.nn.Module) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        if isinstance(getattr(norm, attr, None), (int, float)):
            return float(getattr(norm, attr))
    return 1e-5  # OLMo's parameter-free LayerNorm hard-codes it


def _normalize(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    x32 = x.float()  # [batch, pos, d_model]
    if kind == "ln":
        x32 = x32 - x32.mean(-1, keepdim=True)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _eager(model) -> str | None:
    """Switch `model` to eager attention (patterns need it); returns the implementation to restore, if any."""
    current = getattr(model.config, "_attn_implementation", None)
    if current in (None, "eager"):
        return None
    model.set_attn_implementation("eager")
    return current
