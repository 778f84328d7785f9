"""Model configuration under HuggingFace `LlamaConfig` field names, and the checks shared by the config classes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from workbench.errors import UsageError


def require(ok: bool, label: str, want: str, value: object) -> None:
    """Raise the one-line UsageError `<label> must be <want>, got <value!r>` unless `ok`."""
    if not ok:
        raise UsageError(f"{label} must be {want}, got {value!r}")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(label: str, value: object, minimum: int = 1) -> None:
    """`value` must be an int (not a bool) >= `minimum` (1 or 0)."""
    require(is_int(value) and value >= minimum, label,
            "a positive integer" if minimum == 1 else "a non-negative integer", value)


def check_number(label: str, value: object, zero_ok: bool = False, high: float | None = None,
                 high_ok: bool = False) -> None:
    """`value` must be a finite int or float above 0 (or at 0 if `zero_ok`) and below `high` (or at it if
    `high_ok`)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value >= 0 if zero_ok else value > 0) and (high is None or value < high or (high_ok and value == high)))
    if high is None:
        want = "a non-negative number" if zero_ok else "a positive number"
    else:
        want = f"a number in {'[' if zero_ok else '('}0, {high}{']' if high_ok else ')'}"
    require(ok, label, want, value)


def check_bool(label: str, value: object) -> None:
    require(isinstance(value, bool), label, "true or false", value)


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
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("rms_norm_eps", "rope_theta", "initializer_range"):
                check_number(f"[model] {f.name}", value)
            elif f.name == "tie_word_embeddings":
                check_bool(f"[model] {f.name}", value)
            elif f.name in ("bos_token_id", "eos_token_id"):  # HF allows a list of ids (several EOS tokens)
                ids = [] if value is None else value if isinstance(value, list) else [value]
                require(all(is_int(i) and i >= 0 for i in ids), f"[model] {f.name}",
                        "a non-negative integer, a list of them or absent", value)
            elif f.name != "head_dim" or value is not None:
                check_int(f"[model] {f.name}", value)
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        if heads % kv:
            raise UsageError(f"[model] num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})")
        derived = ""
        if self.head_dim is None:
            if self.hidden_size % heads:
                raise UsageError(f"[model] hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                                 f"({heads}), or set head_dim")
            self.head_dim = self.hidden_size // heads
            derived = f" (hidden_size {self.hidden_size} / num_attention_heads {heads})"
        if self.head_dim % 2:
            raise UsageError(f"[model] head_dim must be even for rotary embeddings, got {self.head_dim}{derived}")

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
