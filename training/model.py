"""A LLaMA, readable top to bottom: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU, tied or
untied embeddings. Parameter names equal HF `LlamaForCausalLM`'s, so an HF state dict loads unchanged.

The elementwise ops and the loss come from `training.kernels`: fused Triton kernels on CUDA, the PyTorch
reference on CPU. One switch (`use_triton`), the same parameters.

Activations are captured under TransformerLens hook names (`blocks.{l}.hook_resid_pre`, ...) by passing a
`Capture`; without one, the forward pass does no extra work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.kernels import get_ops


HOOKS = ("hook_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.attn.hook_pattern", "blocks.{l}.hook_attn_out",
         "blocks.{l}.hook_resid_mid", "blocks.{l}.mlp.hook_pre", "blocks.{l}.mlp.hook_post", "blocks.{l}.hook_mlp_out",
         "blocks.{l}.hook_resid_post", "ln_final.hook_normalized")


class Capture:
    """Which activations to keep, by TransformerLens hook name, and the kept tensors (`cache`).

    A hook's tensor is handed to `fn(name, tensor)` when given (for running statistics that never keep the
    activations), else stored detached in `cache`.
    """

    def __init__(self, names, fn=None):
        self.names, self.fn, self.cache = set(names), fn, {}

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if name in self.names:
            if self.fn is not None:
                self.fn(name, x)
            else:
                self.cache[name] = x.detach()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x, ops):  # [batch, pos, d_model]
        return ops.rms_norm(x, self.weight, self.eps)


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

    def forward(self, x, cos, sin, ops, capture=None, pattern_hook: str = ""):
        b, t, _ = x.shape  # [batch, pos, d_model]
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)  # [batch, pos, head, d_head]
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)  # [batch, pos, kv_head, d_head]
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim)
        q, k = ops.rotary(q, cos, sin), ops.rotary(k, cos, sin)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [batch, head, pos, d_head]
        if capture is not None and pattern_hook in capture:
            z = self._explicit(q, k, v, capture, pattern_hook)
        else:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(z.transpose(1, 2).reshape(b, t, -1))  # [batch, pos, d_model]

    def _explicit(self, q, k, v, capture, pattern_hook):
        """Attention with the pattern materialised, for when it is asked for (SDPA never forms it)."""
        b, _, t, d = q.shape
        group = self.n_heads // self.n_kv
        q = (q / math.sqrt(d)).view(b, self.n_kv, group, t, d)  # the heads of a kv head share its k and v
        scores = (q @ k.unsqueeze(2).transpose(-1, -2)).view(b, self.n_heads, t, t)  # [batch, head, query, key]
        scores = scores.float() if scores.dtype != torch.float32 else scores
        future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        pattern = scores.masked_fill_(future, float("-inf")).softmax(-1).to(q.dtype)
        capture(pattern_hook, pattern)
        z = pattern.view(b, self.n_kv, group, t, t) @ v.unsqueeze(2)  # [batch, kv_head, group, pos, d_head]
        return z.view(b, self.n_heads, t, d)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x, ops):  # [batch, pos, d_model]
        return self.down_proj(ops.swiglu(self.gate_proj(x), self.up_proj(x)))  # via [batch, pos, d_mlp]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, ops, capture=None, prefix: str = ""):  # [batch, pos, d_model]
        if capture is None:
            x = x + self.self_attn(self.input_layernorm(x, ops), cos, sin, ops)
            return x + self.mlp(self.post_attention_layernorm(x, ops), ops)
        capture(f"{prefix}.hook_resid_pre", x)
        attn_out = self.self_attn(self.input_layernorm(x, ops), cos, sin, ops, capture, f"{prefix}.attn.hook_pattern")
        capture(f"{prefix}.hook_attn_out", attn_out)
        x = x + attn_out
        capture(f"{prefix}.hook_resid_mid", x)
        mlp = self.mlp
        gate = mlp.gate_proj(h := self.post_attention_layernorm(x, ops))  # [batch, pos, d_mlp]
        capture(f"{prefix}.mlp.hook_pre", gate)  # the activation function's input, as TransformerLens's gated MLPs
        post = ops.swiglu(gate, mlp.up_proj(h))
        capture(f"{prefix}.mlp.hook_post", post)
        mlp_out = mlp.down_proj(post)
        capture(f"{prefix}.hook_mlp_out", mlp_out)
        x = x + mlp_out
        capture(f"{prefix}.hook_resid_post", x)
        return x


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)


class Llama(nn.Module):
    """LLaMA causal language model under HF parameter names (`model.layers.0.self_attn.q_proj.weight`, ...)."""

    def __init__(self, cfg: ModelConfig, use_triton: bool | None = None):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.use_triton = use_triton
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """HF LLaMA initialisation: normal(0, initializer_range) for matrices, ones for norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.config.initializer_range)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def ops(self, device: torch.device):
        use = self.use_triton if self.use_triton is not None else device.type == "cuda"
        return get_ops(use)

    def hidden_states(self, input_ids: torch.Tensor, capture: Capture | None = None) -> torch.Tensor:
        """Final normalised residual stream, [batch, pos, d_model]."""
        ops = self.ops(input_ids.device)
        x = self.model.embed_tokens(input_ids)  # [batch, pos, d_model]
        cos, sin = self.model.rotary(input_ids.shape[1], x.dtype)  # [pos, d_head/2]
        if capture is not None:
            capture("hook_embed", x)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, ops, capture, f"blocks.{i}")
        if capture is not None and "ln_final.hook_normalized" in capture:
            # TransformerLens's hook_normalized is x / rms(x), before the weight.
            x32 = x.float()
            capture("ln_final.hook_normalized", (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) +
                                                                   self.config.rms_norm_eps)).to(x.dtype))
        return self.model.norm(x, ops)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean",
                capture: Capture | None = None):
        """Logits [batch, pos, vocab] without targets; with targets, the cross-entropy loss computed by the
        fused linear + cross-entropy op, which never materialises the full logits. `capture` collects
        activations by TransformerLens hook name."""
        h = self.hidden_states(input_ids, capture)
        if targets is None:
            return self.lm_head(h)
        ops = self.ops(input_ids.device)
        loss = ops.linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten(), reduction=reduction)
        return loss if reduction == "mean" else loss.view(targets.shape)

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


def checkpoint_state(model: Llama) -> dict[str, torch.Tensor]:
    """The state dict to store: parameters only, without the tied `lm_head.weight` (as HF saves it)."""
    state = {k: v for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def load_checkpoint_state(model: Llama, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
