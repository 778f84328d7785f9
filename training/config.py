"""Model configuration under HuggingFace `LlamaConfig` field names, and the presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class ModelConfig:
    """A LLaMA architecture. Field names are HF `LlamaConfig` names, so the dict form loads in transformers."""

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None  # default hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    def to_hf(self) -> dict:
        """The config as an HF `config.json` dict (model_type llama)."""
        d = asdict(self)
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                "attention_bias": False, "mlp_bias": False, **d}

    @classmethod
    def from_hf(cls, config: dict) -> "ModelConfig":
        """Our fields from an HF LLaMA config dict (rope_theta from `rope_parameters` when present)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in config.items() if k in known}
        if "rope_parameters" in config and config["rope_parameters"]:
            d["rope_theta"] = config["rope_parameters"].get("rope_theta", d.get("rope_theta", 10000.0))
        return cls(**d)
