"""Checking tensors against an HF config: the shapes a model built from the config would have.

`check_against_config` is the validator the store takes (`workbench.store.writer.Validator`) when runs are
created or imported through the workbench's API and CLI: the store itself knows no model.
"""

from __future__ import annotations

import json
from functools import lru_cache

from workbench.errors import IncompatibleCheckpoint


@lru_cache(maxsize=8)
def _expected(config_json: str):
    """(shape of every state-dict tensor, names a checkpoint must hold, checkpoint-name renamer) of the HF model
    the config describes, built on the meta device; None if transformers does not know its `model_type`.
    Tied copies (an `lm_head.weight` tied to the embeddings) are allowed but not required."""
    model_config = json.loads(config_json)
    model_type = model_config.get("model_type")
    if not model_type:
        return None
    import torch
    import transformers

    try:
        fields = {k: v for k, v in model_config.items() if k != "model_type"}
        config = transformers.AutoConfig.for_model(model_type, **fields)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError):
        return None
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    return shapes, frozenset(name for name, _ in model.named_parameters()), _renamer(model)


# Checkpoint files may name tensors otherwise than the model does (transformers 5 renames on load: GPT-NeoX's
# `embed_out.weight`, as Pythia and save_pretrained write it, is the model's `lm_head.weight`).
def _renamer(model):
    """checkpoint name -> (model name, whether a converter merges it with others), as `from_pretrained` maps it."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return lambda name: (name, False)
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    if not transforms:
        return lambda name: (name, False)

    def rename(name: str) -> tuple[str, bool]:
        new, pattern = rename_source_key(name, renamings, converters)
        return new, pattern is not None

    return rename


def _to_model_names(shapes: dict[str, tuple[int, ...]], rename) -> dict[str, tuple[int, ...] | None]:
    """Checkpoint names as the model's; None for the shape of a tensor that a converter merges (not comparable)."""
    out: dict[str, tuple[int, ...] | None] = {}
    for name, shape in shapes.items():
        new, merged = rename(name)
        out[new] = None if merged else shape
    return out


def check_against_config(shapes: dict[str, tuple[int, ...]], model_config: dict, complete: bool = True) -> None:
    """Raise `IncompatibleCheckpoint` when a tensor (name -> shape) is unknown to the config's model or has
    another shape there, or (with `complete`) when one of the model's parameters is missing."""
    found = _expected(json.dumps(model_config, sort_keys=True))
    if found is None:
        return
    expected, required, rename = found
    shapes = _to_model_names(shapes, rename)
    if complete and (missing := sorted(required - shapes.keys())):
        raise IncompatibleCheckpoint(f"the checkpoint lacks {missing[0]}" + (
            f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + " that the model config implies")
    unknown = sorted(n for n in shapes if n not in expected)
    if unknown:
        raise IncompatibleCheckpoint(f"the model config ({model_config['model_type']}) has no parameter "
                                     f"{unknown[0]}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    for name, shape in shapes.items():
        if shape is not None and tuple(shape) != expected[name]:
            raise IncompatibleCheckpoint(f"{name} is {list(shape)} but the model config implies "
                                         f"{list(expected[name])}; the config does not match the tensors")
