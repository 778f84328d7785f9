"""Views of a checkpoint (in-repo LLaMA, transformers, TransformerLens, nnsight) and activation capture.

    ckpt = workbench.open("runs/tiny").checkpoint(1000)
    ckpt.model()                    # training.model.Llama, eval mode
    ckpt.to_hf()                    # transformers causal LM (LlamaForCausalLM, GPTNeoXForCausalLM, ...)
    ckpt.to_hooked_transformer()    # TransformerLens TransformerBridge, compatibility mode
    ckpt.to_nnsight()               # nnsight.LanguageModel with the run's tokenizer

    from workbench.models.capture import capture
    logits, acts = capture(ckpt, ids, ["blocks.{l}.hook_resid_post"])

Heavy libraries (transformers, transformer_lens, nnsight) load on first use.
"""

from __future__ import annotations

__all__ = ["llama", "hf_model", "hooked_transformer", "nnsight_model", "hf_tokenizer"]


def __getattr__(name: str):
    # (`capture` is deliberately not re-exported: the name is its module's, workbench.models.capture.)
    if name in ("llama", "hf_model", "hooked_transformer", "nnsight_model", "hf_tokenizer"):
        from workbench.models import views

        return getattr(views, name)
    raise AttributeError(f"module 'workbench.models' has no attribute {name!r}")
