"""The user-facing `Run` and `Checkpoint` (what `workbench.open` returns): the store's reader, plus the
analyses (`analyze`, `results`) and the views of a checkpoint (`model`, `to_hf`, `to_hooked_transformer`,
`to_nnsight`) from the layers above it. `create` and `RunWriter` check tensors against the model config
through transformers (`workbench.models.config_check`), and `create` records the parameter roles of the config's
architecture (`workbench.models.roles`), which the store alone cannot."""

from __future__ import annotations

import os

from workbench import store
from workbench.models.config_check import check_against_config


class Checkpoint(store.Checkpoint):
    """One committed step of a run, with views of its model."""

    def model(self, device=None, dtype=None):
        """The in-repo `training.model.Llama` with these weights, in eval mode (LLaMA runs only)."""
        from workbench.models.views import llama

        return llama(self, device=device, dtype=dtype)

    def to_hf(self, device=None, dtype=None, attn_implementation: str = "eager"):
        """A transformers causal LM with these weights (`LlamaForCausalLM`, or the imported config's class)."""
        from workbench.models.views import hf_model

        return hf_model(self, device=device, dtype=dtype, attn_implementation=attn_implementation)

    def to_hooked_transformer(self, process_weights: bool = False, device=None, dtype=None, **processing):
        """A TransformerLens `TransformerBridge` (compatibility mode; HookedTransformer weight processing with
        `process_weights=True`). See `workbench.models.views.hooked_transformer`."""
        from workbench.models.views import hooked_transformer

        return hooked_transformer(self, process_weights=process_weights, device=device, dtype=dtype, **processing)

    def to_nnsight(self, device=None, dtype=None):
        """An `nnsight.LanguageModel` over `to_hf()` with the run's tokenizer."""
        from workbench.models.views import nnsight_model

        return nnsight_model(self, device=device, dtype=dtype)


class Run(store.Run):
    """A training trajectory (see `workbench.store.Run`), with its analyses."""

    checkpoint_type = Checkpoint

    @property
    def parameter_roles(self) -> dict | None:
        """The run's recorded parameter roles or, for a run made before they were recorded, its model config's."""
        if recorded := super().parameter_roles:
            return recorded
        from workbench.models.roles import parameter_roles  # imports torch (through training.model)

        return parameter_roles(self.model_config)

    def analyze(self, names=None, steps=None, workers: int | None = None, scheduler: str | None = None,
                progress: bool = True, **options) -> dict[str, list[int]]:
        """Compute analyses (default: all registered) at `steps` (default: all; a list, a slice over step
        values or "0:20000:1000") with Dask and commit them under `results/<name>`; skips the (analysis,
        step) pairs already stored. Returns {name: steps computed}. See `workbench.analysis.analyze`."""
        from workbench.analysis import analyze

        try:
            return analyze(self, names, steps, workers=workers, scheduler=scheduler, progress=progress, **options)
        finally:
            self.refresh()

    def results(self, name: str):
        """The stored results of analysis `name` as an `xarray.Dataset` with a `step` dimension, sorted by step."""
        from workbench.analysis import load_results

        return load_results(self, name)


class RunWriter(store.RunWriter):
    """Appends checkpoints to a run; the first is checked against the run's model config."""

    def __init__(self, location: str | os.PathLike):
        super().__init__(location, validate=check_against_config)


def create(location: str | os.PathLike, model_config: dict, tokenizer=None, train_config: dict | None = None,
           layout: store.Layout = store.Layout()) -> RunWriter:
    """A new run at `location` (local folder or s3://bucket/prefix) with its metadata committed, and its writer.
    `tokenizer` is a `tokenizers.Tokenizer`, its JSON text, or a path to a tokenizer.json; `layout` says how its
    tensors are stored (`workbench.store.Layout`: sharded and uncompressed by default). The parameter roles of
    the config's architecture (`workbench.models.roles`) are recorded with it."""
    from workbench.models.roles import parameter_roles

    store.create(location, model_config, tokenizer=tokenizer, train_config=train_config, layout=layout,
                 roles=parameter_roles(model_config))
    return RunWriter(location)
