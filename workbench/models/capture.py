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

To patch, `run_with_hooks(model, input_ids, fwd_hooks)` (or `with hooks(model, fwd_hooks):`) takes
TransformerLens' hooks on either path: `(name, hook)` pairs, the name possibly with `{l}` or a filter of names,
`hook(x, hook=point)` returning None or a replacement that flows on (`training.model.HookPoint`; `point.name`
is the hook's name). On the generic path a replacement takes effect through the module hooks of transformers:
`ln_final.hook_normalized` replaced by `r` makes the final norm's output `weight * r (+ bias)`; the pattern
(formed and used inside one attention function) and `hook_resid_mid` (a sum inside the block's forward) can be
read there, not replaced (a hook returning a replacement raises `UsageError`). Hooks that replace nothing leave
the logits bit-equal on both paths (on the generic path, of the model under eager attention: hooking a pattern
switches it to eager for the pass).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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
    activations go to `fn(name, tensor)` instead (its return value is ignored) and the dict comes back empty.
    `logits=False` skips the unembedding (None comes back): for activations only, it saves vocab × d_model per
    token.

    `source` is a `Checkpoint`, a `training.model.Llama` or a transformers causal LM. A checkpoint is opened
    for this one call (`open_model`: the in-repo LLaMA for the workbench's runs, the transformers model
    otherwise); open the model once and pass it when capturing many batches.
    """
    model = _model_of(source)
    wanted = _expand([names] if isinstance(names, str) else list(names), available_hooks(model), n_layers(model))
    cache: dict[str, torch.Tensor] = {}

    def observe(x: torch.Tensor, hook) -> None:
        if fn is None:
            cache[hook.name] = x.detach()
        else:
            fn(hook.name, x)

    with torch.no_grad():
        out = _run(model, _batch(input_ids, model), [(n, observe) for n in wanted], logits)
    return out, {n: cache[n] for n in wanted if n in cache}


def run_with_hooks(source, input_ids: torch.Tensor, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], Callable]],
                   logits: bool = True) -> torch.Tensor | None:
    """One forward pass of `input_ids` `[batch, pos]` with TransformerLens hooks `(name, hook)` in place (see the
    module's docstring): the logits `[batch, pos, vocab]`, or None with `logits=False`. Gradients flow unless the
    caller turns them off. `source` as for `capture`."""
    model = _model_of(source)
    return _run(model, _batch(input_ids, model), fwd_hooks, logits)


@contextmanager
def hooks(model: torch.nn.Module, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], Callable]]
          ) -> Iterator[torch.nn.Module]:
    """TransformerLens hooks `(name, hook)` on the in-repo LLaMA or a transformers model for the block (see the
    module's docstring). Nested blocks compose; each removes its own hooks on exit, also on an error."""
    if not _is_model(model):
        raise UsageError(f"hooks takes a training.model.Llama or a transformers model, not {type(model).__name__}")
    resolved = _resolve(model, fwd_hooks)
    if _is_llama(model):
        with model.hooks(resolved):
            yield model
    else:
        with _hf_hooks(model, resolved):
            yield model


def _run(model, input_ids: torch.Tensor, fwd_hooks, logits: bool) -> torch.Tensor | None:
    with hooks(model, fwd_hooks):
        if not _is_llama(model):
            runner = model if logits else model.base_model  # the backbone: every hooked module, no unembedding
            out = runner(input_ids=input_ids, use_cache=False)
            return out.logits if logits else None
        out = model(input_ids) if logits else model.hidden_states(input_ids)
    return out if logits else None


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
    if _is_llama(model) or not _is_model(model):  # the in-repo LLaMA, or a streamed model
        return model.config.num_hidden_layers
    return len(_module(model, _layout(model.config.model_type).layers))


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _batch(input_ids, model) -> torch.Tensor:
    """Token ids as `[batch, pos]` on the model's device (1-D ids are one sequence)."""
    input_ids = torch.as_tensor(input_ids)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2:
        raise UsageError(f"input_ids must be [batch, pos], got shape {list(input_ids.shape)}")
    return input_ids.to(_device_of(model))


def _resolve(model, fwd_hooks) -> list[tuple[str, Callable]]:
    """`(name, hook)` pairs with every name a hook point of `model`: `{l}` expanded, filters applied."""
    available, count = available_hooks(model), n_layers(model)
    every = _expand(available, available, count)
    out = []
    for name, hook in fwd_hooks:
        names = [n for n in every if name(n)] if callable(name) else _expand([name], available, count)
        out += [(n, hook) for n in names]
    return out


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


_READ_ONLY = {"attn.hook_pattern": "transformers forms and uses the pattern inside one attention function",
              "hook_resid_mid": "the block adds it up inside its forward, where no module sees it"}


@contextmanager
def _hf_hooks(model, resolved: list[tuple[str, Callable]]) -> Iterator[None]:
    """The hooks on the transformers model's modules for the block: each hook name's `HookPoint` (its hooks in
    order) runs from a forward (pre-)hook as its module runs, a replacement taking the activation's place."""
    from training.model import HookPoint

    layout = _layout(model.config.model_type)
    points: dict[str, HookPoint] = {}
    for name, hook in resolved:
        points.setdefault(name, HookPoint(name)).add_hook(hook)
    mids = {int(n.split(".")[1]) for n in points if n.endswith("hook_resid_mid")}
    pending: dict[int, torch.Tensor] = {}  # resid_pre of a layer whose resid_mid is hooked, until attn_out comes

    def run(name: str, x: torch.Tensor) -> torch.Tensor:
        return points[name](x) if name in points else x

    def read_only(name: str, x: torch.Tensor) -> None:
        if name in points and points[name].patch(x) is not None:
            why = _READ_ONLY[name.split(".", 2)[2]]
            raise UsageError(f"{name} cannot be replaced on the transformers path ({why}); hooks there may read it, "
                             "or patch it on the in-repo LLaMA")

    def resid_pre(l: int, x: torch.Tensor) -> torch.Tensor:
        x = run(f"blocks.{l}.hook_resid_pre", x)
        if l in mids:
            pending[l] = x
        return x

    def attn_out(l: int, x: torch.Tensor) -> torch.Tensor:
        x = run(f"blocks.{l}.hook_attn_out", x)
        if l in mids:  # resid_mid = resid_pre + attn_out
            read_only(f"blocks.{l}.hook_resid_mid", pending.pop(l) + x)
        return x

    def final_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The norm's output for a replaced `x / rms(x)` (or `(x - mean) / std`); None if the hooks kept it."""
        normalized = points["ln_final.hook_normalized"].patch(_normalize(x, layout.norm, _eps(norm)))
        if normalized is None:
            return None
        weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
        out = normalized if weight is None else weight * normalized
        return out if bias is None else out + bias

    handles: list = []

    def on_output(module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """`fn` on the module's output (its first element), whose return takes its place."""
        def hook(m, args, out):
            x = _first(out)
            new = fn(x)
            return None if new is x else (new, *out[1:]) if isinstance(out, (tuple, list)) else new

        handles.append(module.register_forward_hook(hook))

    def on_input(module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """`fn` on the module's hidden-state input, whose return takes its place."""
        def hook(m, args, kwargs):
            x = _hidden_arg(args, kwargs)
            new = fn(x)
            return None if new is x else _with_hidden_arg(args, kwargs, new)

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    restore = _eager(model) if any(n.endswith("attn.hook_pattern") for n in points) else None
    try:
        if "hook_embed" in points:
            on_output(model.get_input_embeddings(), lambda x: run("hook_embed", x))
        if layout.pos_embed and "hook_pos_embed" in points:
            on_output(_module(model, layout.pos_embed), lambda x: run("hook_pos_embed", x))
        for l, block in enumerate(_module(model, layout.layers)):
            p = f"blocks.{l}."
            if p + "hook_resid_pre" in points or l in mids:
                on_input(block, lambda x, l=l: resid_pre(l, x))  # [batch, pos, d_model]
            if p + "attn.hook_pattern" in points:
                handles.append(block.get_submodule(layout.attn).register_forward_hook(  # [batch, head, query, key]
                    lambda m, args, out, n=p + "attn.hook_pattern": read_only(n, out[1])))
            if p + "hook_attn_out" in points or l in mids:
                on_output(block.get_submodule(layout.attn_out), lambda x, l=l: attn_out(l, x))
            for path, hook, pre in ((layout.mlp_act, "mlp.hook_pre", True), (layout.mlp_down, "mlp.hook_post", True),
                                    (layout.mlp_out, "hook_mlp_out", False)):
                if p + hook in points:
                    (on_input if pre else on_output)(block.get_submodule(path), lambda x, n=p + hook: run(n, x))
            if p + "hook_resid_post" in points:
                on_output(block, lambda x, n=p + "hook_resid_post": run(n, x))
        if "ln_final.hook_normalized" in points:
            handles.append(_module(model, layout.final_norm).register_forward_hook(
                lambda m, args, kwargs, out: final_norm(m, _hidden_arg(args, kwargs)), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
        if restore is not None:
            model.set_attn_implementation(restore)


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values())) if len(kwargs) == 1 else kwargs["hidden_states"]


def _with_hidden_arg(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    """`(args, kwargs)` with the hidden state `_hidden_arg` finds replaced by `x`."""
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, (next(iter(kwargs)) if len(kwargs) == 1 else "hidden_states"): x}


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
