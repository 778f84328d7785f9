"""A LLaMA, readable top to bottom: RMSNorm, rotary embeddings, grouped-query attention with a KV cache, SwiGLU,
tied or untied embeddings, loading from a state dict and greedy generation. Parameter names equal HF
`LlamaForCausalLM`'s, so an HF state dict loads unchanged.

The elementwise ops and the loss follow the tensor's device (`training.kernels`): fused Triton kernels on
CUDA, the PyTorch reference elsewhere.

Activations pass through hook points (TransformerLens' `HookPoint`): identity modules whose names come from
the module tree, translated to TransformerLens names (`model.layers.3.self_attn.hook_pattern` is
`blocks.3.attn.hook_pattern`). `with model.hooks(names, fn):` hands each named activation to `fn(name, x)` as
the pass produces it; with no hook active the forward pass does no extra work.
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

__all__ = ["HOOKS", "HookPoint", "KVCache", "Llama", "ModelConfig", "checkpoint_state", "load_checkpoint_state"]

# TransformerLens names of every hook point, `{l}` for the layer (a test checks them against the module tree).
HOOKS = ("hook_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.ln1.hook_normalized", "blocks.{l}.attn.hook_pattern",
         "blocks.{l}.hook_attn_out", "blocks.{l}.hook_resid_mid", "blocks.{l}.ln2.hook_normalized",
         "blocks.{l}.mlp.hook_pre", "blocks.{l}.mlp.hook_post", "blocks.{l}.hook_mlp_out", "blocks.{l}.hook_resid_post",
         "ln_final.hook_normalized")
# Module-tree path -> TransformerLens name, in order (`model.layers.0.input_layernorm.hook_normalized` ->
# `blocks.0.ln1.hook_normalized`, `model.norm.hook_normalized` -> `ln_final.hook_normalized`).
_TL_NAMES = (("model.layers.", "blocks."), (".self_attn.", ".attn."), (".input_layernorm.", ".ln1."),
             (".post_attention_layernorm.", ".ln2."), ("model.norm.", "ln_final."), ("model.", ""))


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
    """Identity that hands its input to `fn(name, x)` while a capture is active; `name` is its TransformerLens
    name, set from the module tree when the model is built."""

    def __init__(self):
        super().__init__()
        self.name, self.fn = "", None

    @property
    def active(self) -> bool:
        return self.fn is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            self.fn(self.name, x)
        return x


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.hook_normalized = HookPoint()  # x / rms(x), before the weight, as TransformerLens'

    def forward(self, x):  # [batch, pos, d_model]
        if not self.hook_normalized.active:
            return ops_for(x).rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        normalized = self.hook_normalized((x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype))
        return self.weight * normalized


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
        if self.hook_pattern.active:  # SDPA never forms the pattern
            z = self._explicit(q, k, v, past)
        else:
            mask = None if past == 0 else torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0,
                                               enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(z.transpose(1, 2).reshape(b, t, -1))  # [batch, pos, d_model]

    def _explicit(self, q, k, v, past: int):
        """Attention with the pattern materialised and handed to `hook_pattern` (queries after `past` cached keys)."""
        b, _, t, d = q.shape
        keys = k.shape[2]
        group = self.n_heads // self.n_kv
        q = (q / math.sqrt(d)).view(b, self.n_kv, group, t, d)  # the heads of a kv head share its k and v
        scores = (q @ k.unsqueeze(2).transpose(-1, -2)).view(b, self.n_heads, t, keys)  # [batch, head, query, key]
        scores = scores.float() if scores.dtype != torch.float32 else scores
        future = torch.ones(t, keys, dtype=torch.bool, device=q.device).triu(past + 1)
        pattern = self.hook_pattern(scores.masked_fill_(future, float("-inf")).softmax(-1).to(q.dtype))
        z = pattern.view(b, self.n_kv, group, t, keys) @ v.unsqueeze(2)  # [batch, kv_head, group, pos, d_head]
        return z.view(b, self.n_heads, t, d)


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

    @contextmanager
    def hooks(self, names: Iterable[str], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
        """Within the block, each forward pass hands the activations `names` to `fn(name, tensor)`."""
        points = self.hook_points()
        chosen = [points[n] for n in names if n in points]
        if unknown := sorted(set(names) - points.keys()):
            raise UsageError(f"no hook {unknown[0]!r} in this model; hooks: {', '.join(HOOKS)}")
        for p in chosen:
            p.fn = fn
        try:
            yield
        finally:
            for p in chosen:
                p.fn = None

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
