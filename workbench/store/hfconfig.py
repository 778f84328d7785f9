"""Checking tensors against an HF config: the shapes a model built from the config would have."""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from workbench.errors import IncompatibleCheckpoint


def expected_shapes(model_config: dict) -> tuple[dict[str, tuple[int, ...]], frozenset[str]] | None:
    """(shape of every state-dict tensor, names a checkpoint must hold) of the HF model the config describes,
    built on the meta device; None if transformers does not know its `model_type`. Tied copies (an
    `lm_head.weight` tied to the embeddings) are allowed but not required."""
    return _expected_shapes(json.dumps(model_config, sort_keys=True))


@lru_cache(maxsize=8)
def _expected_shapes(config_json: str) -> tuple[dict[str, tuple[int, ...]], frozenset[str]] | None:
    model_config = json.loads(config_json)
    model_type = model_config.get("model_type")
    if not model_type:
        return None
    import transformers

    try:
        fields = {k: v for k, v in model_config.items() if k != "model_type"}
        config = transformers.AutoConfig.for_model(model_type, **fields)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError):
        return None
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    return shapes, frozenset(name for name, _ in model.named_parameters())


def check_against_config(shapes: dict[str, tuple[int, ...]], model_config: dict, complete: bool = True) -> None:
    """Raise `IncompatibleCheckpoint` when a tensor (name -> shape) is unknown to the config's model or has
    another shape there, or (with `complete`) when one of the model's parameters is missing."""
    found = expected_shapes(model_config)
    if found is None:
        return
    expected, required = found
    if complete and (missing := sorted(required - shapes.keys())):
        raise IncompatibleCheckpoint(f"the checkpoint lacks {missing[0]}" + (
            f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + " that the model config implies")
    unknown = sorted(n for n in shapes if n not in expected)
    if unknown:
        raise IncompatibleCheckpoint(f"the model config ({model_config['model_type']}) has no parameter "
                                     f"{unknown[0]}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    for name, shape in shapes.items():
        if tuple(shape) != expected[name]:
            raise IncompatibleCheckpoint(f"{name} is {list(shape)} but the model config implies "
                                         f"{list(expected[name])}; the config does not match the tensors")
