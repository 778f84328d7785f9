"""Named model + training configurations, and loading them from TOML with strict key checking."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, fields, replace
from pathlib import Path

from training.config import ModelConfig
from training.train_config import TrainConfig, with_overrides
from workbench.errors import UsageError
from workbench.store.textfile import read_text

PRESETS: dict[str, tuple[dict, dict]] = {
    # fits a 2-core CPU at well over 10 steps/s
    "tiny": (dict(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256),
             dict(batch_size=8, seq_len=64, lr=3e-3, warmup_steps=50)),
    # the demo run: deep and wide enough for layer x step pictures, trains 2,000 steps in about a minute on 2 cores
    "demo": (dict(vocab_size=1024, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256),
             dict(batch_size=8, seq_len=64, lr=3e-3, warmup_steps=50)),
    "small": (dict(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024),
              dict(batch_size=32, seq_len=512, lr=1e-3, warmup_steps=500)),
    "125m": (dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048),
             dict(batch_size=16, seq_len=2048, lr=6e-4, warmup_steps=2000)),
    "350m": (dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                  num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048),
             dict(batch_size=16, seq_len=2048, lr=3e-4, warmup_steps=2000)),
    "1b": (dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
           dict(batch_size=8, seq_len=2048, lr=3e-4, warmup_steps=2000)),
}


def _check_keys(given: dict, cls, where: str) -> None:
    valid = sorted(f.name for f in fields(cls))
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise UsageError(f"unknown {where} key {unknown[0]!r}; valid keys: {', '.join(valid)}")


def preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    model, train = PRESETS[name]
    return ModelConfig(**model), TrainConfig(preset=name, **train)


def load(config_path: str | Path | None = None, preset_name: str | None = None, **overrides) -> tuple[ModelConfig, TrainConfig]:
    """A preset (default `tiny`), then a TOML file's `[model]` and `[train]` tables, then `overrides` (train keys)."""
    model_cfg, train_cfg = preset(preset_name or "tiny")
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise UsageError(f"config file {path} not found")
        try:
            doc = tomllib.loads(read_text(path))
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{path} is not valid TOML: {e}") from None
        unknown = sorted(set(doc) - {"model", "train"})
        if unknown:
            raise UsageError(f"unknown section [{unknown[0]}] in {path}; valid sections: [model], [train]")
        model_doc, train_doc = doc.get("model", {}), doc.get("train", {})
        _check_keys(model_doc, ModelConfig, "[model]")
        _check_keys(train_doc, TrainConfig, "[train]")
        if "preset" in train_doc:
            model_cfg, train_cfg = preset(train_doc["preset"])
        model_cfg = ModelConfig(**{**asdict(model_cfg), "head_dim": None, **model_doc})
        train_cfg = replace(train_cfg, **train_doc)
    _check_keys(overrides, TrainConfig, "training")
    return model_cfg, with_overrides(train_cfg, **overrides)
