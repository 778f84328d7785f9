"""Checkpoints run block by block from the store: forward passes of models larger than a worker.

A streamed model holds no block. `run(batches, names, fn)` embeds every batch (reading only the embedding rows the
batches use), then for each block reads that block's weights alone (`Checkpoint.array` of one layer: in the
sharded layout exactly its shards; the next block is read in a background thread while this one computes),
applies it to every batch's residual stream, and drops it — the way FlexGen, AirLLM and accelerate's disk offload
go. The hook points fire as in the whole model, with the same TransformerLens names, so activations captured
either way are the same. `unembed` reads logits out through the final norm and the unembedding, a block of the
vocabulary at a time. Memory: one block being applied and one being read, the batches' residual streams, and the
unembedding in its stored dtype.

On CUDA a block is read into pinned memory and copied to the device on a side stream by the reading thread, so
the copy overlaps the previous block's compute; with `device="cuda"` and several GPUs, consecutive blocks go to
consecutive devices (the residual streams follow them), the unembedding to the last.

Two kinds, as `capture.open_model` chooses between the whole models: `StreamedLlama` applies the in-repo LLaMA's
blocks; `StreamedHF` the decoder layers of the transformers model of any architecture `capture` supports
(GPT-NeoX, GPT-2, OLMo, ...), with its hooks, positions and masks made by that model's own forward up to its first
layer. `open_streamed(checkpoint)` picks one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from training.model import KVCache
from workbench.errors import IncompatibleCheckpoint

VOCAB_BLOCK = 8192  # unembedding rows widened to the compute dtype at once


def open_streamed(checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "Streamed":
    """The streamed model of a checkpoint: the in-repo LLaMA's blocks when it implements the run's config, else the
    transformers model's layers."""
    from workbench.models.views import llama_unsupported

    cls = StreamedLlama if llama_unsupported(checkpoint.run.model_config) is None else StreamedHF
    return cls(checkpoint, device, dtype)


def streaming_unsupported(model_config: dict) -> str | None:
    """Why a run of this model config cannot be streamed block by block, or None when it can."""
    from workbench.models.capture import LAYOUTS
    from workbench.models.views import llama_unsupported

    if llama_unsupported(model_config) is None or model_config.get("model_type") in LAYOUTS:
        return None
    return (f"model_type {model_config.get('model_type')!r} has no layer layout here (streamed: the in-repo LLaMA "
            f"and {', '.join(sorted(LAYOUTS))})")


class Streamed:
    """What both streamed kinds share: the pass over the blocks with one read ahead, embedding rows, greedy
    generation and the unembedding in vocabulary blocks (see the module docstring)."""

    def __init__(self, checkpoint, device: str | torch.device, dtype: torch.dtype):
        self.checkpoint, self.device, self.dtype = checkpoint, torch.device(device), dtype
        self.devices = _devices(self.device)

    n_layers: int
    embedding: str  # the store name of the token embedding

    def run(self, batches: list[torch.Tensor], names: Iterable[str] = (),
            fn: Callable[[int, str, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Token ids `[batch, pos]` of every batch through the model, block by block: `fn(i, name, x)` gets
        activation `name` (TransformerLens names, `{l}` for every layer) of batch `i`; returns each batch's
        residual stream after the last block (before the final norm)."""
        from workbench.models.capture import _expand, available_hooks

        with torch.no_grad():
            return self._forward(batches, set(_expand(list(names), available_hooks(self.checkpoint), self.n_layers)), fn)

    def generate(self, prompts: list[torch.Tensor], max_new_tokens: int) -> list[torch.Tensor]:
        """Greedy continuations of every batch of prompts `[batch, pos]` -> `[batch, pos + max_new_tokens]`, as
        the whole model's: the prompts (their last tokens, if prompt and continuation exceed the context) encoded
        into a KV cache per block, then one token at a time — each token one pass over the blocks for all
        batches."""
        keep = max(1, self.context - max_new_tokens)
        caches = [self._cache() for _ in prompts]
        new, out = [p[:, -keep:] for p in prompts], [[p] for p in prompts]
        with torch.no_grad():
            for _ in range(max_new_tokens):
                finals = self._forward(new, caches=caches)
                new = [self.unembed(x[:, -1]).argmax(-1, keepdim=True).cpu() for x in finals]
                for o, token in zip(out, new):
                    o.append(token)
        return [torch.cat(o, 1) for o in out]

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits `[..., vocab]` of residual streams through the final norm and the unembedding, widened from
        the stored dtype `VOCAB_BLOCK` rows at a time."""
        norm, weight = self.head()
        with torch.no_grad():
            x = norm(resid.to(weight.device, self.dtype))
            return torch.cat([x @ weight[i: i + VOCAB_BLOCK].to(self.dtype).T
                              for i in range(0, weight.shape[0], VOCAB_BLOCK)], dim=-1)

    @property
    def context(self) -> int:
        raise NotImplementedError

    def head(self) -> tuple[torch.nn.Module, torch.Tensor]:
        """The final norm (compute dtype) and the unembedding matrix (stored dtype)."""
        raise NotImplementedError

    def _forward(self, batches: list[torch.Tensor], wanted: set[str] = frozenset(), fn=None,
                 caches: list | None = None) -> list[torch.Tensor]:
        """`run`'s pass; with `caches` (one `_cache()` per batch), the positions continue those the caches hold."""
        raise NotImplementedError

    def _cache(self):
        raise NotImplementedError

    def _layers(self, read: Callable[[int], object]) -> Iterator[tuple[int, object]]:
        """`(layer, read(layer))` for every layer, the next layer read in a background thread while the caller
        uses this one."""
        with ThreadPoolExecutor(1, thread_name_prefix="block-prefetch") as pool:
            pending = pool.submit(self._copied, read, 0)
            for layer in range(self.n_layers):
                value = pending.result()
                if layer + 1 < self.n_layers:
                    pending = pool.submit(self._copied, read, layer + 1)
                yield layer, value
                del value

    def layer_device(self, layer: int) -> torch.device:
        """The device block `layer` computes on (consecutive blocks on consecutive devices)."""
        return self.devices[layer * len(self.devices) // self.n_layers]

    def _copied(self, read: Callable[[int], object], layer: int) -> object:
        """`read(layer)`, its host-to-device copies on a side stream of the layer's CUDA device, finished."""
        device = self.layer_device(layer)
        if device.type != "cuda":
            return read(layer)
        stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            value = read(layer)
        stream.synchronize()
        return value

    def _layer_tensor(self, template: str, layer: int) -> torch.Tensor:
        """One stored parameter of one layer, on its device in the compute dtype (through pinned memory on CUDA)."""
        t = self.checkpoint.array(template, slice(layer, layer + 1))[0]
        device = self.layer_device(layer)
        if device.type == "cuda":
            t = t.pin_memory()
        return t.to(device, self.dtype if t.is_floating_point() else t.dtype, non_blocking=True)

    def _embed_rows(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The embedding rows the batches use `[row, d_model]` (the inner chunks holding them, read once for all
        batches) and each batch's ids as indexes into those rows."""
        rows, index = torch.unique(torch.cat([ids.reshape(-1).cpu() for ids in batches]), return_inverse=True)
        table = self.checkpoint.run.trajectory(self.embedding).sel(step=self.checkpoint.step)
        values = torch.as_tensor(table[rows.numpy()].values).to(self.devices[0], self.dtype)
        parts = index.to(self.devices[0]).split([ids.numel() for ids in batches])
        return values, [part.reshape(ids.shape) for part, ids in zip(parts, batches)]


class StreamedLlama(Streamed):
    """The model of one checkpoint (a run whose config the in-repo LLaMA implements), read block by block."""

    embedding = "model.embed_tokens.weight"

    def __init__(self, checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from training.model import ModelConfig, Rotary

        super().__init__(checkpoint, device, dtype)
        self.config = ModelConfig.from_hf(checkpoint.run.model_config)
        self.rotary = Rotary(self.config.head_dim, self.config.max_position_embeddings, self.config.rope_theta)
        self.n_layers = self.config.num_hidden_layers
        self._head = None

    @property
    def context(self) -> int:
        return self.config.max_position_embeddings

    def _cache(self) -> list["_LayerCache"]:
        return [_LayerCache() for _ in range(self.n_layers)]

    def _forward(self, batches, wanted=frozenset(), fn=None, caches=None):
        from training.model import HookPoint

        current = [0]  # the batch being applied, for the hooks

        def observe(x: torch.Tensor, hook: HookPoint) -> None:
            fn(current[0], hook.name, x)

        pasts = [c[0].length for c in caches] if caches else [0] * len(batches)
        values, parts = self._embed_rows(batches)
        xs = [values[part] for part in parts]
        if "hook_embed" in wanted:
            for i, x in enumerate(xs):
                fn(i, "hook_embed", x)
        for layer, block in self._layers(self._block):
            for point in block.modules():
                if isinstance(point, HookPoint) and point.name in wanted:
                    point.add_hook(observe)
            device = self.layer_device(layer)
            for i, x in enumerate(xs):
                current[0] = i
                x = x.to(device)
                cos, sin = (t[pasts[i]:].to(device) for t in self.rotary(pasts[i] + x.shape[1], x.dtype))
                cache = caches[i][layer] if caches else None
                xs[i] = block(x, cos, sin, cache)
                if cache is not None:
                    cache.length += x.shape[1]
            del block
        if "ln_final.hook_normalized" in wanted:
            norm, _ = self.head()
            for i, x in enumerate(xs):
                fn(i, "ln_final.hook_normalized", norm._normalized(x.to(self.devices[-1])))
        return xs

    def head(self):
        from training.model import RMSNorm

        if self._head is None:
            norm = RMSNorm(self.config.hidden_size, self.config.rms_norm_eps).to(self.devices[-1], self.dtype)
            norm.hook_normalized.name = "ln_final.hook_normalized"
            norm.weight.data.copy_(self.checkpoint.array("model.norm.weight"))
            name = self.embedding if self.config.tie_word_embeddings else "lm_head.weight"
            self._head = norm.eval(), self.checkpoint.array(name).to(self.devices[-1])
        return self._head

    def _block(self, layer: int):
        """Block `layer` with its weights read from the store, its hook points named as in the whole model."""
        from training.model import Block, HookPoint, _tl_name

        with torch.device("meta"):
            block = Block(self.config)
        block.load_state_dict({name: self._layer_tensor(f"model.layers.{{layer}}.{name}", layer)
                               for name in block.state_dict()}, assign=True)
        for path, module in block.named_modules():
            if isinstance(module, HookPoint):
                module.name = _tl_name(f"model.layers.{layer}.{path}")
        return block.eval()


class StreamedHF(Streamed):
    """The transformers model of one checkpoint (an imported GPT-NeoX, GPT-2, OLMo, ... run), read layer by layer.

    The model is built on the meta device; its parts outside the layers (norms, position embeddings, rotary
    tables) are loaded once; a layer's weights are assigned when it runs and sent back to meta after. The
    embedding holds only the rows the batches use (the ids handed to the model are indexes into them); the model's
    own forward runs up to its first layer for the hidden states, positions, masks and cache it hands each layer.
    Store names map to the model's as transformers' own loading renames them (GPT-NeoX's `embed_out` is
    `lm_head`)."""

    def __init__(self, checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        import transformers

        from workbench.models.capture import _layout
        from workbench.models.views import hf_config

        super().__init__(checkpoint, device, dtype)
        self.config = hf_config(checkpoint.run.model_config)
        self.layout = _layout(self.config.model_type)
        cls = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(self.config)]
        with torch.device("meta"):
            self.model = cls._from_config(self.config, attn_implementation="eager", dtype=dtype).eval()
        self.blocks = self.model.get_submodule(self.layout.layers)
        self.n_layers = len(self.blocks)
        names = _store_names(self.model, checkpoint.run.parameter_arrays, self.layout.layers)
        prefix = f"{self.layout.layers}.0."
        self.layer_names = {n.removeprefix(prefix): s for n, s in names.items() if n.startswith(prefix)}
        paths = {id(m): path for path, m in self.model.named_modules()}
        embed = f"{paths[id(self.model.get_input_embeddings())]}.weight"
        unembed = f"{paths[id(self.model.get_output_embeddings())]}.weight"
        self.embedding = names[embed]
        self.unembedding = names.get(unembed) or self.embedding  # tied: the embedding's rows
        rest = {n: s for n, s in names.items() if not n.startswith(f"{self.layout.layers}.") and n not in (embed, unembed)}
        self.model.load_state_dict({n: self._tensor(s) for n, s in rest.items()}, strict=False, assign=True)
        for path, module in self.model.named_modules():
            if path.startswith(f"{self.layout.layers}.") or path == self.layout.layers:
                continue
            if any(b.is_meta for b in module.buffers(recurse=False)):  # rotary tables: computed, not stored
                module.to_empty(device=self.device, recurse=False)
                self.model._init_weights(module)
        self.norm = self.model.get_submodule(self.layout.final_norm).to(self.devices[-1])
        self._unembedding = None

    @property
    def context(self) -> int:
        c = self.config
        return int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions"))

    def _cache(self):
        import transformers

        return transformers.DynamicCache(config=self.config)

    def _tensor(self, name: str) -> torch.Tensor:
        t = self.checkpoint.array(name)
        return t.to(self.device, self.dtype if t.is_floating_point() else t.dtype)

    def head(self):
        if self._unembedding is None:
            self._unembedding = self.checkpoint.array(self.unembedding).to(self.devices[-1])
        return self.norm, self._unembedding

    def _read(self, layer: int) -> dict[str, torch.Tensor]:
        return {name: self._layer_tensor(template, layer) for name, template in self.layer_names.items()}

    def _forward(self, batches, wanted=frozenset(), fn=None, caches=None):
        from torch.utils._pytree import tree_map

        from workbench.models.capture import _first, _with_hidden_arg, hooks

        current = [0]  # the batch being applied, for the hooks

        def observe(x: torch.Tensor, hook) -> None:
            fn(current[0], hook.name, x)

        with hooks(self.model, [(name, observe) for name in sorted(wanted)]):
            xs, calls = self._inputs(batches, caches, current)
            for layer, state in self._layers(self._read):
                block, device = self.blocks[layer], self.layer_device(layer)
                block.load_state_dict(state, assign=True)
                for i, x in enumerate(xs):
                    current[0] = i
                    if x.device != device:
                        calls[i] = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, calls[i])
                    args, kwargs = _with_hidden_arg(*calls[i], x.to(device))
                    xs[i] = _first(block(*args, **kwargs))
                block.to("meta")
            if "ln_final.hook_normalized" in wanted:
                for i, x in enumerate(xs):
                    current[0] = i
                    self.norm(x.to(self.devices[-1]))
        return xs

    def _inputs(self, batches: list[torch.Tensor], caches: list | None, current: list[int]
                ) -> tuple[list[torch.Tensor], list[tuple[tuple, dict]]]:
        """Each batch's hidden state before the first layer and the arguments `(args, kwargs)` the model hands its
        layers, from the model's own forward stopped at its first layer (embedding hooks fire on the way, with
        `current[0]` the batch)."""
        from workbench.models.capture import _hidden_arg

        values, parts = self._embed_rows(batches)
        embedding = self.model.get_input_embeddings()
        embedding.weight = torch.nn.Parameter(values, requires_grad=False)

        def stop(module, args, kwargs):
            raise _Reached(args, kwargs)

        xs, calls = [], []
        handle = self.blocks[0].register_forward_pre_hook(stop, with_kwargs=True, prepend=True)
        try:
            for i, ids in enumerate(parts):
                current[0] = i
                try:
                    self.model.base_model(input_ids=ids, cache=caches[i] if caches else None,
                                          use_cache=caches is not None)
                except _Reached as reached:
                    xs.append(_hidden_arg(reached.args, reached.kwargs))
                    calls.append((reached.args, reached.kwargs))
                else:
                    raise IncompatibleCheckpoint(f"{type(self.model).__name__} never called its first layer")
            return xs, calls
        finally:
            handle.remove()
            embedding.to("meta")


def _devices(device: torch.device) -> list[torch.device]:
    """Every GPU for `cuda` without an index when there are several; else `device` alone."""
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


class _Reached(Exception):
    """The model's forward reached its first layer (with these arguments)."""

    def __init__(self, args: tuple, kwargs: dict):
        super().__init__()
        self.args, self.kwargs = args, kwargs


def _store_names(model: torch.nn.Module, stored: Iterable[str], layers: str) -> dict[str, str]:
    """The model's parameter names (those of the ModuleList `layers` as layer 0) -> the store's names, renamed as transformers' loading
    renames a checkpoint; one that transformers would convert (split, merge, permute) refuses streaming."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()
    out = {}
    for name in stored:
        target, converted = rename_source_key(name.replace("{layer}", "0"), renamings, converters,
                                              model.base_model_prefix, meta)
        if converted is not None:
            raise IncompatibleCheckpoint(f"{name}: transformers converts this tensor when loading "
                                         f"{type(model).__name__}, which a streamed pass does not")
        out[target] = name
    first = re.compile(rf"^{re.escape(layers)}\.\d+\.")
    missing = sorted({first.sub(f"{layers}.0.", n) for n, _ in model.named_parameters() if not _tied(model, n)} - set(out))
    if missing:
        raise IncompatibleCheckpoint(f"{type(model).__name__} needs {missing[0]}, which the run does not store"
                                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return out


def _tied(model: torch.nn.Module, name: str) -> bool:
    out = model.get_output_embeddings()
    return out is not None and name.endswith("weight") and out.weight is model.get_input_embeddings().weight and \
        model.get_submodule(name.rsplit(".", 1)[0]) is out


class _LayerCache(KVCache):
    """The keys and values of one block of the in-repo LLaMA (a streamed pass builds its blocks anew, so they are
    not the key)."""

    def extend(self, module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().extend(None, k, v)
