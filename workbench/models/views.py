"""Views of one checkpoint: the in-repo LLaMA, a transformers model, a TransformerLens bridge, an nnsight model.

Every view is built from the run alone (its stored config, tensors and tokenizer): no hub call, ever. The
tensors are checked against the stored config before any model is built, so a config that disagrees with the
tensors fails with `IncompatibleCheckpoint` naming the tensor, never with a shape error deep in torch.

| view | architectures |
|---|---|
| `llama` (`Checkpoint.model`) | `model_type` llama without biases, scaled rope or another activation |
| `hf_model` (`Checkpoint.to_hf`) | any `model_type` transformers builds a causal LM for |
| `hooked_transformer` (`Checkpoint.to_hooked_transformer`) | the transformers ones TransformerLens has an adapter for |
| `nnsight_model` (`Checkpoint.to_nnsight`) | as `hf_model`; needs the run's tokenizer |
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from workbench.errors import IncompatibleCheckpoint, MissingData, UsageError

if TYPE_CHECKING:
    from training.model import Llama
    from workbench.store.run import Checkpoint, Run

# Tokens the workbench's own tokenizer reserves (training/data/tokenizer.py), used when the config names none.
_EOS, _PAD = "<|endoftext|>", "<|pad|>"
# Architectures whose TransformerLens view the workbench tests (any other adapter TransformerLens has works too).
TESTED_TL_ARCHITECTURES = ("LlamaForCausalLM", "GPTNeoXForCausalLM", "GPT2LMHeadModel")


# ---------------------------------------------------------------------------------------------- checks

def _resolve(device, dtype, stored: torch.dtype) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise UsageError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return device, dtype or stored


def _checked_state(checkpoint: "Checkpoint") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, after checking them against the stored config (names and shapes)."""
    from workbench.models.config_check import check_against_config

    config = _config_of(checkpoint)
    state = checkpoint.state_dict()
    try:
        check_against_config({k: tuple(v.shape) for k, v in state.items()}, config)
    except IncompatibleCheckpoint as e:
        raise IncompatibleCheckpoint(f"step {checkpoint.step} of {checkpoint.run.location}: {e}") from None
    return state


def _config_of(checkpoint: "Checkpoint") -> dict:
    config = checkpoint.run.model_config
    if not config.get("model_type"):
        raise IncompatibleCheckpoint(f"{checkpoint.run.location} stores no model_type in its model config, so no "
                                     "model can be built for it; re-import it with its config.json")
    return config


def _stored_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def llama_unsupported(model_config: dict) -> str | None:
    """Why the in-repo LLaMA cannot run this config, or None when it can."""
    if model_config.get("model_type") != "llama":
        return (f"model_type {model_config.get('model_type')!r} is not the in-repo LLaMA's (supported: llama); "
                "use to_hf(), to_hooked_transformer() or to_nnsight()")
    for key in ("attention_bias", "mlp_bias"):
        if model_config.get(key):
            return f"the in-repo LLaMA has no biases ({key} is set); use to_hf()"
    if model_config.get("hidden_act", "silu") != "silu":
        return f"the in-repo LLaMA uses SiLU, the config says {model_config['hidden_act']!r}; use to_hf()"
    rope = model_config.get("rope_parameters") or model_config.get("rope_scaling") or {}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        return f"the in-repo LLaMA has plain rotary embeddings, the config scales them ({rope}); use to_hf()"
    if (model_config.get("pretraining_tp") or 1) != 1:
        return "the in-repo LLaMA does not emulate pretraining_tp > 1; use to_hf()"
    return None


# ---------------------------------------------------------------------------------------------- views

def llama(checkpoint: "Checkpoint", device=None, dtype=None) -> "Llama":
    """The in-repo `training.model.Llama` with the checkpoint's weights, in eval mode."""
    from training.model import Llama

    config = _config_of(checkpoint)
    if why := llama_unsupported(config):
        raise IncompatibleCheckpoint(why)
    state = _checked_state(checkpoint)
    device, dtype = _resolve(device, dtype, _stored_dtype(state))
    return Llama.from_state_dict(config, state, device=device, dtype=dtype)


def hf_config(model_config: dict, **overrides):
    """The transformers config object of a stored model config (`AutoConfig.for_model`)."""
    import transformers

    fields = {k: v for k, v in model_config.items() if k != "model_type"}
    try:
        return transformers.AutoConfig.for_model(model_config["model_type"], **{**fields, **overrides})
    except (ValueError, KeyError):
        known = sorted(transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
        raise IncompatibleCheckpoint(f"transformers {transformers.__version__} does not know model_type "
                                     f"{model_config.get('model_type')!r}; its causal LMs are "
                                     f"{', '.join(known)}") from None


def hf_model(checkpoint: "Checkpoint", device=None, dtype=None, attn_implementation: str = "eager"):
    """A transformers causal LM with the checkpoint's weights, in eval mode: `LlamaForCausalLM` for the
    workbench's runs, the class of the stored config (`AutoModelForCausalLM.from_config`) for imported ones.

    `attn_implementation` defaults to eager, which forms attention patterns (`output_attentions=True`).
    """
    import transformers

    state = _checked_state(checkpoint)
    device, dtype = _resolve(device, dtype, _stored_dtype(state))
    config = hf_config(checkpoint.run.model_config)
    try:
        cls = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        known = sorted(transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
        raise IncompatibleCheckpoint(f"transformers has no causal LM for model_type {config.model_type!r}; "
                                     f"it has one for {', '.join(known)}") from None
    # from_pretrained with the tensors in hand: no download, no random init, and transformers' own renaming of
    # checkpoint names (GPT-NeoX's embed_out is lm_head) and tying, exactly as loading the exported folder would.
    with _quiet_progress():
        model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                          attn_implementation=attn_implementation, output_loading_info=True)
    problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        kind, names = next((k, v) for k, v in problems.items() if v)
        raise IncompatibleCheckpoint(f"step {checkpoint.step} of {checkpoint.run.location}: loading into "
                                     f"{cls.__name__} gives {kind.replace('_', ' ')} {names[0]}"
                                     + (f" (and {len(names) - 1} more)" if len(names) > 1 else ""))
    return model.to(device).eval()


@contextmanager
def _quiet_progress():
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def hooked_transformer(checkpoint: "Checkpoint", process_weights: bool = False, device=None, dtype=None,
                       fold_ln: bool = True, center_writing_weights: bool = True, center_unembed: bool = True,
                       fold_value_biases: bool = True):
    """A TransformerLens `TransformerBridge` over `hf_model(checkpoint)`, in compatibility mode.

    Hook names and `run_with_cache` are TransformerLens's (`blocks.{l}.hook_resid_pre`, ...). Without
    `process_weights` the weights are the checkpoint's and the logits equal `to_hf()`'s; with it,
    TransformerLens's HookedTransformer processing (fold_ln, centering, ...) is applied: logits then equal the
    others' up to a per-position constant (`center_unembed`), and residual streams are in TransformerLens's
    processed basis. The bridge's config is derived from the run (rotary base from `rope_theta`, GQA,
    head_dim, norm eps, tied embeddings); nothing is downloaded.
    """
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    run = checkpoint.run
    model = hf_model(checkpoint, device=device, dtype=dtype, attn_implementation="eager")
    architecture = type(model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES:
        causal = sorted(a for a in SUPPORTED_ARCHITECTURES if a.endswith(("ForCausalLM", "LMHeadModel")))
        raise IncompatibleCheckpoint(
            f"TransformerLens has no adapter for {architecture} (model_type {run.model_config.get('model_type')!r}); "
            f"it supports {', '.join(causal)} (the workbench tests {', '.join(TESTED_TL_ARCHITECTURES)}); "
            "use to_hf() or to_nnsight() instead")
    tokenizer = hf_tokenizer(run, add_bos_token=True)
    if tokenizer is not None:
        tokenizer.init_kwargs.setdefault("name_or_path", run.location)  # TransformerLens reads it; no reload
    bridge = build_bridge_from_module(model, architecture, tl_config=bridge_config(model, architecture),
                                      tokenizer=tokenizer, model_name=f"{run.location}@{checkpoint.step}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not process_weights, fold_ln=fold_ln,
                                         center_writing_weights=center_writing_weights,
                                         center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    bridge.cfg.checkpoint_value = checkpoint.step
    return bridge.eval()


def bridge_config(model, architecture: str):
    """TransformerLens's config for `model`, with the fields its HF translation gets wrong under transformers 5
    set from the model's own config: `rotary_base` and `rotary_dim` (transformers 5 moved `rope_theta` and the
    partial rotary factor into `rope_parameters`, which TransformerLens 4.3 does not read: every rotary model got
    base 10000 and no rotary_dim), head_dim, GQA, eps, tying. The forward pass is transformers' own either way;
    these fields matter to analyses that read the config."""
    from transformer_lens.model_bridge.sources import build_bridge_config_from_hf

    config = model.config
    cfg = build_bridge_config_from_hf(config, architecture, "workbench", next(model.parameters()).dtype)
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    theta = theta if theta is not None else getattr(config, "rope_theta", None)
    if getattr(config, "head_dim", None):
        cfg.d_head = config.head_dim
    if theta is not None:  # a rotary model
        cfg.positional_embedding_type = "rotary"
        cfg.rotary_base = theta
        factor = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
        cfg.rotary_dim = int(cfg.d_head * (factor if factor is not None else 1.0))
    kv, heads = getattr(config, "num_key_value_heads", None), getattr(config, "num_attention_heads", None)
    if kv is not None:
        cfg.n_key_value_heads = kv if kv != heads else None
    for field in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"):
        if getattr(config, field, None) is not None:
            cfg.eps = getattr(config, field)
            break
    cfg.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
    return cfg


def nnsight_model(checkpoint: "Checkpoint", device=None, dtype=None):
    """An `nnsight.LanguageModel` over `hf_model(checkpoint)` with the run's tokenizer."""
    run = checkpoint.run
    tokenizer = hf_tokenizer(run)
    if tokenizer is None:
        raise MissingData(f"{run.location} has no tokenizer, which nnsight needs; attach one when importing: "
                         f"`wb import hf SRC --out RUN --tokenizer DIR` (DIR holding tokenizer.json)")
    model = hf_model(checkpoint, device=device, dtype=dtype)
    import nnsight

    with warnings.catch_warnings():  # nnsight 0.8 deprecates the name, not the class (a TransformersModel)
        warnings.simplefilter("ignore")
        return nnsight.LanguageModel(model, tokenizer=tokenizer)


def tokenizer_config(run: "Run") -> dict:
    """`tokenizer_config.json` for an export of the run, so that tools given only the folder (lm-evaluation-harness'
    `HFLM` takes its prefix token from it) see what the workbench sees: the special tokens the model config names
    (as `hf_tokenizer` reads them), the context length, no space clean-up on decoding, and a class that
    transformers 4 loads too."""
    config = run.model_config
    max_len = config.get("max_position_embeddings") or config.get("n_positions")
    return {"tokenizer_class": "PreTrainedTokenizerFast", **hf_tokenizer(run).special_tokens_map,
            "clean_up_tokenization_spaces": False, **({"model_max_length": max_len} if max_len else {})}


def hf_tokenizer(run: "Run", add_bos_token: bool = False):
    """The run's tokenizer as a `transformers.PreTrainedTokenizerFast` (None when the run has none), with
    special tokens from the model config's ids (or the workbench's own `<|endoftext|>` and `<|pad|>`)."""
    import transformers

    if run.tokenizer is None:
        return None
    tok = run.tokenizer
    config = run.model_config

    def token(key: str, fallback: str | None = None) -> str | None:
        ids = config.get(key)
        ids = ids[0] if isinstance(ids, list) and ids else ids
        if isinstance(ids, int) and (name := tok.id_to_token(ids)) is not None:
            return name
        return fallback if fallback is not None and tok.token_to_id(fallback) is not None else None

    special = {"eos_token": token("eos_token_id", _EOS), "bos_token": token("bos_token_id"),
               "pad_token": token("pad_token_id", _PAD)}
    special = {k: v for k, v in special.items() if v is not None}
    if add_bos_token and "bos_token" in special:
        special["add_bos_token"] = True
    max_len = config.get("max_position_embeddings") or config.get("n_positions")
    # A copy: the wrapper may change its Tokenizer (post-processor, padding), and run.tokenizer is shared.
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tok.to_str())
    return transformers.PreTrainedTokenizerFast(tokenizer_object=copy, model_max_length=max_len or int(1e30),
                                                **special)
