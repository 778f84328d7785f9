"""A LLaMA, readable top to bottom: RMSNorm, rotary embeddings, grouped-query attention with a KV cache, SwiGLU,
tied or untied embeddings, loading from a state dict and greedy generation. Parameter names equal HF
`LlamaForCausalLM`'s, so an HF state dict loads unchanged.

The elementwise ops and the loss follow the tensor's device (`training.kernels`): fused Triton kernels on
CUDA, the PyTorch reference elsewhere.

Activations pass through hook points, as TransformerLens' `HookPoint`s: identity modules whose names come from
the module tree, translated to TransformerLens names (`model.layers.3.self_attn.hook_pattern` is
`blocks.3.attn.hook_pattern`). Any number of hooks `hook(x, hook=point)` per point run in order; one that returns
a tensor replaces the activation for the rest of the pass (patching, ablation, steering):

    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x * 0)]):  # or run_with_hooks
        logits = model(ids)
    with model.hooks(names, fn):  # observers: fn(name, x) at each of `names`, its return value ignored
        ...

Hooks that change nothing change no bit of the output: the attention pattern and a norm's x / rms(x) are
computed beside the main path (SDPA, the fused RMSNorm), which takes them only when a hook changed them. With
no hook active the forward pass does no extra work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.kernels import Ops, get_ops
from workbench.errors import IncompatibleCheckpoint, UsageError
from workbench.store.layout import head_role, neuron_role

__all__ = ["HOOKS", "Hook", "HookHandle", "HookPoint", "KVCache", "Llama", "ModelConfig", "checkpoint_state",
           "load_checkpoint_state", "parameter_roles"]

# TransformerLens names of every hook point, `{l}` for the layer (a test checks them against the module tree).
HOOKS = ("hook_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.ln1.hook_normalized", "blocks.{l}.attn.hook_pattern",
         "blocks.{l}.hook_attn_out", "blocks.{l}.hook_resid_mid", "blocks.{l}.ln2.hook_normalized",
         "blocks.{l}.mlp.hook_pre", "blocks.{l}.mlp.hook_post", "blocks.{l}.hook_mlp_out", "blocks.{l}.hook_resid_post",
         "ln_final.hook_normalized")
# Module-tree path -> TransformerLens name, in order (`model.layers.0.input_layernorm.hook_normalized` ->
# `blocks.0.ln1.hook_normalized`, `model.norm.hook_normalized` -> `ln_final.hook_normalized`).
_TL_NAMES = (("model.layers.", "blocks."), (".self_attn.", ".attn."), (".input_layernorm.", ".ln1."),
             (".post_attention_layernorm.", ".ln2."), ("model.norm.", "ln_final."), ("model.", ""))

Hook = Callable[..., torch.Tensor | None]  # hook(activation, hook=point) -> None (unchanged) or its replacement
HookName = str | Callable[[str], bool]  # a hook point's TransformerLens name, or a filter of names


def ops_for(x: torch.Tensor) -> Ops:
    """Triton kernels for CUDA tensors, the PyTorch reference otherwise."""
    return get_ops(x.is_cuda)


class KVCache:
    """Keys and values of the positions seen so far, per attention module (`[batch, kv_head, pos, d_head]`): a
    prefix encoded once, then continued — several ways at once after `expand` (the choices of a multiple-choice
    item), or one token at a time (greedy decoding)."""

    def __init__(self):
        self.kv: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.length = 0

    def extend(self, module: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' keys and values; returns every position's."""
        if module in self.kv:
            pk, pv = self.kv[module]
            k, v = torch.cat([pk.expand(k.shape[0], -1, -1, -1), k], 2), torch.cat([pv.expand(v.shape[0], -1, -1, -1), v], 2)
        self.kv[module] = (k, v)
        return k, v

    def expand(self, batch: int) -> "KVCache":
        """The same prefix for `batch` continuations (views, no copy)."""
        out = KVCache()
        out.kv = {m: (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for m, (k, v) in self.kv.items()}
        out.length = self.length
        return out


class HookPoint(nn.Module):
    """Identity on one activation, unless hooks are added: each hook, in the order added, gets the activation (as
    the hooks before it left it) as `hook(x, hook=self)` and returns None to leave it, or a tensor of its shape
    that replaces it for the rest of the pass. `name` is the TransformerLens name, set from the module tree."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name
        self.fwd_hooks: list[HookHandle] = []

    @property
    def active(self) -> bool:
        return bool(self.fwd_hooks)

    def layer(self) -> int:
        """The block of a `blocks.{l}.…` hook point (TransformerLens' `hook.layer()`)."""
        return int(self.name.split(".")[1])

    def add_hook(self, hook: Hook, prepend: bool = False) -> HookHandle:
        """Run `hook` after the hooks already here (before them with `prepend`); `.remove()` the handle to undo."""
        handle = HookHandle(self, hook)
        # a new list rather than an insertion: a pass iterating the old one is not disturbed
        self.fwd_hooks = [handle, *self.fwd_hooks] if prepend else [*self.fwd_hooks, handle]
        return handle

    def remove_hooks(self) -> None:
        self.fwd_hooks = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for handle in self.fwd_hooks:
            out = handle.hook(x, hook=self)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
                    raise UsageError(f"a hook at {self.name} returned {got}; a hook returns None or a tensor of "
                                     f"the activation's shape {list(x.shape)}")
                x = out
        return x

    def patch(self, x: torch.Tensor) -> torch.Tensor | None:
        """The hooks on `x`, a value computed beside the main path: the replacement, or None when no hook changed
        it (each returned None or `x` itself, and none wrote into it), so the main path's result stands."""
        if x.is_inference():  # inference tensors have no version counter: compare with a copy
            before = x.clone()
            out = self(x)
            return None if out is x and torch.equal(x, before) else out
        version = x._version  # bumped by every in-place change
        out = self(x)
        return None if out is x and x._version == version else out


class HookHandle:
    """One hook added to one hook point; `remove()` takes off that hook only."""

    def __init__(self, point: HookPoint, hook: Hook):
        self.point, self.hook = point, hook

    def remove(self) -> None:
        self.point.fwd_hooks = [h for h in self.point.fwd_hooks if h is not self]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.hook_normalized = HookPoint()  # x / rms(x), before the weight, as TransformerLens'

    def forward(self, x):  # [batch, pos, d_model]
        if self.hook_normalized.active:  # computed beside the fused op, whose output stands unless a hook changes it
            normalized = self.hook_normalized.patch(self._normalized(x))
            if normalized is not None:
                return self.weight * normalized
        return ops_for(x).rms_norm(x, self.weight, self.eps)

    def _normalized(self, x):
        """x / rms(x) in x's dtype, statistics in float32 (the reference op before its weight)."""
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class Rotary(nn.Module):
    """cos/sin tables of rotary position embeddings, in float32, not saved with the weights."""

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # [pos, head_dim/2]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, seq_len: int, dtype: torch.dtype):
        return self.cos[:seq_len].to(dtype), self.sin[:seq_len].to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.hook_pattern = HookPoint()  # [batch, head, query, key]

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        b, t, _ = x.shape  # [batch, pos, d_model]
        ops = ops_for(x)
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)  # [batch, pos, head, d_head]
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)  # [batch, pos, kv_head, d_head]
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim)
        q, k = ops.rotary(q, cos, sin), ops.rotary(k, cos, sin)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [batch, head, pos, d_head]
        if cache is not None:
            k, v = cache.extend(self, k, v)  # [batch, kv_head, past + pos, d_head]
        past = k.shape[2] - t
        # SDPA never forms the pattern: it is computed beside it for the hooks, and used only if they change it
        pattern = self.hook_pattern.patch(self._pattern(q, k, past)) if self.hook_pattern.active else None
        if pattern is None:
            mask = None if past == 0 else torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0,
                                               enable_gqa=self.n_kv != self.n_heads)
        else:
            z = self._mix(pattern, v)
        return self.o_proj(z.transpose(1, 2).reshape(b, t, -1))  # [batch, pos, d_model]

    def _pattern(self, q, k, past: int):
        """Attention weights `[batch, head, query, key]` of queries after `past` cached keys (softmax in float32)."""
        b, _, t, d = q.shape
        keys = k.shape[2]
        q = (q / math.sqrt(d)).view(b, self.n_kv, -1, t, d)  # the heads of a kv head share its k
        scores = (q @ k.unsqueeze(2).transpose(-1, -2)).view(b, self.n_heads, t, keys).float()
        future = torch.ones(t, keys, dtype=torch.bool, device=q.device).triu(past + 1)
        return scores.masked_fill_(future, float("-inf")).softmax(-1).to(q.dtype)

    def _mix(self, pattern, v):
        """The heads' outputs `[batch, head, pos, d_head]` for attention weights `pattern`."""
        b, _, t, keys = pattern.shape
        z = pattern.view(b, self.n_kv, -1, t, keys) @ v.unsqueeze(2)  # [batch, kv_head, group, pos, d_head]
        return z.view(b, self.n_heads, t, v.shape[-1])


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.hook_pre = HookPoint()  # the activation function's input (the gate), as TransformerLens' gated MLPs
        self.hook_post = HookPoint()  # the output projection's input

    def forward(self, x):  # [batch, pos, d_model]
        gate = self.hook_pre(self.gate_proj(x))  # [batch, pos, d_mlp]
        return self.down_proj(self.hook_post(ops_for(x).swiglu(gate, self.up_proj(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            setattr(self, name, HookPoint())

    def forward(self, x, cos, sin, cache: KVCache | None = None):  # [batch, pos, d_model]
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.self_attn(self.input_layernorm(x), cos, sin, cache)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.post_attention_layernorm(x))))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.hook_embed = HookPoint()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)

    def forward(self, input_ids, cache: KVCache | None = None):  # [batch, pos], after `cache.length` positions
        past = cache.length if cache is not None else 0
        x = self.hook_embed(self.embed_tokens(input_ids))  # [batch, pos, d_model]
        cos, sin = (table[past:] for table in self.rotary(past + input_ids.shape[1], x.dtype))  # [pos, d_head/2]
        for layer in self.layers:
            x = layer(x, cos, sin, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.norm(x)


class Llama(nn.Module):
    """LLaMA causal language model under HF parameter names (`model.layers.0.self_attn.q_proj.weight`, ...)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        for path, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = _tl_name(path)
        self.reset_parameters()

    @classmethod
    def from_state_dict(cls, config: ModelConfig | dict, state: dict[str, torch.Tensor], device=None,
                        dtype: torch.dtype | None = None) -> "Llama":
        """A model with these weights (HF names; a tied `lm_head.weight` may be absent), in eval mode.
        `config` is a `ModelConfig` or an HF config dict."""
        cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_hf(config)
        with torch.device("meta"):  # no random init of weights about to be overwritten
            model = cls(cfg)
        model = model.to_empty(device=device or "cpu")  # fresh tensors per module: the output embedding's tie is lost
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.model.rotary = Rotary(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta).to(device)
        load_checkpoint_state(model, state)
        return model.to(dtype).eval()

    def reset_parameters(self) -> None:
        """HF LLaMA initialisation: normal(0, initializer_range) for matrices, ones for norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.config.initializer_range)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by TransformerLens name."""
        return {m.name: m for m in self.modules() if isinstance(m, HookPoint)}

    def add_hook(self, name: HookName, hook: Hook, prepend: bool = False) -> list[HookHandle]:
        """Add `hook` at the hook point `name` (or at every one a filter `name(point_name)` accepts) until its
        handles are removed or `reset_hooks`."""
        return [point.add_hook(hook, prepend) for point in self._resolve(name, self.hook_points())]

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point."""
        for point in self.hook_points().values():
            point.remove_hooks()

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[HookName, Hook]] | Iterable[str] = (),
              fn: Callable[[str, torch.Tensor], object] | None = None) -> Iterator["Llama"]:
        """Hooks for the block, as TransformerLens' `hooks(fwd_hooks=[(name, hook), ...])`; `hooks(names, fn)`
        hands each of `names` to the observer `fn(name, x)` (what it returns is ignored: a capture never patches
        by accident). Nested blocks compose; each removes its own hooks on exit, also on an error."""
        if fn is not None:
            def observe(x: torch.Tensor, hook: HookPoint) -> None:
                fn(hook.name, x)

            fwd_hooks = [(name, observe) for name in fwd_hooks]
        every = self.hook_points()
        points = [(point, hook) for name, hook in fwd_hooks for point in self._resolve(name, every)]  # all known first
        handles = []
        try:
            for point, hook in points:
                handles.append(point.add_hook(hook))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, *args, fwd_hooks: Iterable[tuple[HookName, Hook]] = (), **kwargs):
        """`self(*args, **kwargs)` with `fwd_hooks` in place for that pass (TransformerLens' `run_with_hooks`)."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    @staticmethod
    def _resolve(name: HookName, points: dict[str, HookPoint]) -> list[HookPoint]:
        if callable(name):
            return [p for n, p in points.items() if name(n)]
        if name not in points:
            raise UsageError(f"no hook {name!r} in this model; hooks: {', '.join(HOOKS)}")
        return [points[name]]

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final normalised residual stream, [batch, pos, d_model] (of the positions after `cache`'s, if given)."""
        return self.model(input_ids, cache)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean",
                cache: KVCache | None = None):
        """Logits [batch, pos, vocab] without targets; with targets, the cross-entropy loss computed by the
        fused linear + cross-entropy op, which never materialises the full logits. With `cache`, the positions
        continue those the cache holds (and are added to it)."""
        h = self.model(input_ids, cache)  # [batch, pos, d_model]
        if targets is None:
            return self.lm_head(h)
        loss = ops_for(h).linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten(),
                                               reduction=reduction)
        return loss if reduction == "mean" else loss.view(targets.shape)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation, `[batch, pos]` -> `[batch, pos + max_new_tokens]`: the prompt (its last tokens,
        if prompt and continuation exceed the context) encoded once into a KV cache, then one token at a time."""
        keep = max(1, self.config.max_position_embeddings - max_new_tokens)
        cache, new = KVCache(), input_ids[:, -keep:]
        out = [input_ids]
        for _ in range(max_new_tokens):
            last = self.model(new, cache)[:, -1]  # [batch, d_model]
            new = self.lm_head(last).argmax(-1, keepdim=True)  # [batch, 1]
            out.append(new)
        return torch.cat(out, 1)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.model.embed_tokens.weight), None)
        return sum(p.numel() for p in params.values())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6·N (matmul params, fwd+bwd) + 12·L·d·T (attention scores), as in PaLM."""
        cfg = self.config
        n = self.num_parameters() - self.model.embed_tokens.weight.numel() * (not cfg.tie_word_embeddings)
        attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len
        return 6 * n + attn


def _tl_name(path: str) -> str:
    for old, new in _TL_NAMES:
        path = path.replace(old, new, 1)
    return path


def checkpoint_state(model: Llama) -> dict[str, torch.Tensor]:
    """The state dict to store: parameters only, without the tied `lm_head.weight` (as HF saves it)."""
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def parameter_roles(heads: int, kv_heads: int, head_dim: int) -> dict:
    """Which axes of `Llama`'s parameters (HF `LlamaForCausalLM` names) hold attention heads and MLP neurons, as
    the run store records them: one head's rows of q, k and v (`kv_heads` of k and v), one head's columns of o;
    an MLP neuron's rows of gate and up, its column of down."""
    return {"head_dim": head_dim,
            "heads": {p: head_role(f"model.layers.{{layer}}.self_attn.{p}_proj.weight", 1 if p == "o" else 0,
                                   kv_heads if p in ("k", "v") else heads, head_dim) for p in ("q", "k", "v", "o")},
            "neurons": [neuron_role(p, f"model.layers.{{layer}}.mlp.{p}_proj.weight", 1 if p == "down" else 0)
                        for p in ("gate", "up", "down")]}


def load_checkpoint_state(model: Llama, state: dict[str, torch.Tensor]) -> None:
    """Load `state` (HF names), every parameter accounted for; a tied `lm_head.weight` may be absent.
    `IncompatibleCheckpoint` names the first tensor that does not fit."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]  # "Error(s) in loading ...", then one per tensor
        raise IncompatibleCheckpoint(f"the tensors do not fit the model the config describes: {lines[min(1, len(lines) - 1)]}"
                                     ) from None
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        what = f"lacks {missing[0]}, needed by" if missing else f"has {unexpected[0]}, unknown to"
        raise IncompatibleCheckpoint(f"the checkpoint {what} the model its config describes "
                                     f"({len(missing)} missing, {len(unexpected)} unexpected)")
