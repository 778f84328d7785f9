"""Checking tensors against an HF config: the shapes a model built from the config would have."""

from __future__ import annotations

import torch

from workbench.errors import IncompatibleCheckpoint


def expected_shapes(model_config: dict) -> dict[str, tuple[int, ...]] | None:
    """Parameter shapes of the HF model the config describes (built on the meta device), or None if
    transformers does not know its `model_type`."""
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
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_against_config(state_dict: dict[str, torch.Tensor], model_config: dict) -> None:
    """Raise `IncompatibleCheckpoint` when a tensor is unknown to the config's model or has another shape."""
    shapes = expected_shapes(model_config)
    if shapes is None:
        return
    unknown = sorted(n for n in state_dict if n not in shapes)
    if unknown:
        raise IncompatibleCheckpoint(f"the model config ({model_config['model_type']}) has no parameter "
                                     f"{unknown[0]}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    for name, t in state_dict.items():
        if tuple(t.shape) != shapes[name]:
            raise IncompatibleCheckpoint(f"{name} is {list(t.shape)} but the model config implies "
                                         f"{list(shapes[name])}; the config does not match the tensors")
