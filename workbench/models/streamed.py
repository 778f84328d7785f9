"""A LLaMA-family checkpoint run block by block from the store: forward passes of models larger than a worker.

`StreamedLlama` holds no block. `run(batches, names, fn)` embeds every batch (reading only the embedding rows the
batches use), then for each block reads that block's weights alone (`Checkpoint.array` of one layer: in the
sharded layout exactly its shards; the next block is read in a background thread while this one computes),
applies it to every batch's residual stream, and drops it — the way FlexGen, AirLLM and accelerate's disk offload
go. The hook points fire as in the whole model (`training.model.Llama`), with the same TransformerLens names, so
activations captured either way are the same. `unembed` reads logits out through the final norm and the
unembedding, a block of the vocabulary at a time. Memory: one block being applied and one being read, the
batches' residual streams, and the unembedding in its stored dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

from training.model import HOOKS, Block, HookPoint, KVCache, ModelConfig, RMSNorm, Rotary, _tl_name

VOCAB_BLOCK = 8192  # unembedding rows widened to the compute dtype at once


class StreamedLlama:
    """The model of one checkpoint (a run whose config the in-repo LLaMA implements), read block by block."""

    def __init__(self, checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.checkpoint, self.device, self.dtype = checkpoint, torch.device(device), dtype
        self.config = ModelConfig.from_hf(checkpoint.run.model_config)
        self.rotary = Rotary(self.config.head_dim, self.config.max_position_embeddings, self.config.rope_theta)
        self._head: tuple[RMSNorm, torch.Tensor] | None = None

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    def run(self, batches: list[torch.Tensor], names: Iterable[str] = (),
            fn: Callable[[int, str, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Token ids `[batch, pos]` of every batch through the model, block by block: `fn(i, name, x)` gets
        activation `name` (TransformerLens names, `{l}` for every layer) of batch `i`; returns each batch's
        residual stream after the last block (before the final norm)."""
        from workbench.models.capture import _expand

        with torch.no_grad():
            return self._forward(batches, set(_expand(list(names), list(HOOKS), self.n_layers)), fn)

    def generate(self, prompts: list[torch.Tensor], max_new_tokens: int) -> list[torch.Tensor]:
        """Greedy continuations of every batch of prompts `[batch, pos]` -> `[batch, pos + max_new_tokens]`, as
        `Llama.generate`: the prompts (their last tokens, if prompt and continuation exceed the context) encoded
        into a KV cache per block, then one token at a time — each token one pass over the blocks for all
        batches."""
        keep = max(1, self.config.max_position_embeddings - max_new_tokens)
        caches = [[_LayerCache() for _ in range(self.n_layers)] for _ in prompts]
        new, out = [p[:, -keep:] for p in prompts], [[p] for p in prompts]
        with torch.no_grad():
            for _ in range(max_new_tokens):
                finals = self._forward(new, caches=caches)
                new = [self.unembed(x[:, -1]).argmax(-1, keepdim=True).cpu() for x in finals]
                for o, token in zip(out, new):
                    o.append(token)
        return [torch.cat(o, 1) for o in out]

    def _forward(self, batches: list[torch.Tensor], wanted: set[str] = frozenset(), fn=None,
                 caches: list[list["_LayerCache"]] | None = None) -> list[torch.Tensor]:
        """`run`'s pass; with `caches` (per batch, per block), the positions continue those the caches hold."""
        current = [0]  # the batch being applied, for the hooks

        def observe(x: torch.Tensor, hook: HookPoint) -> None:
            fn(current[0], hook.name, x)

        pasts = [c[0].length for c in caches] if caches else [0] * len(batches)
        xs = self._embed(batches)
        if "hook_embed" in wanted:
            for i, x in enumerate(xs):
                fn(i, "hook_embed", x)
        with ThreadPoolExecutor(1, thread_name_prefix="block-prefetch") as pool:
            pending = pool.submit(self._block, 0)
            for layer in range(self.n_layers):
                block = pending.result()
                if layer + 1 < self.n_layers:
                    pending = pool.submit(self._block, layer + 1)
                for point in block.modules():
                    if isinstance(point, HookPoint) and point.name in wanted:
                        point.add_hook(observe)
                for i, x in enumerate(xs):
                    current[0] = i
                    cos, sin = (t[pasts[i]:] for t in self.rotary(pasts[i] + x.shape[1], x.dtype))
                    cache = caches[i][layer] if caches else None
                    xs[i] = block(x, cos, sin, cache)
                    if cache is not None:
                        cache.length += x.shape[1]
                del block
        if "ln_final.hook_normalized" in wanted:
            norm, _ = self.head()
            for i, x in enumerate(xs):
                fn(i, "ln_final.hook_normalized", norm._normalized(x))
        return xs

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits `[..., vocab]` of residual streams through the final norm and the unembedding, widened from
        the stored dtype `VOCAB_BLOCK` rows at a time."""
        norm, weight = self.head()
        with torch.no_grad():
            x = norm(resid.to(self.device, self.dtype))
            return torch.cat([x @ weight[i: i + VOCAB_BLOCK].to(self.dtype).T
                              for i in range(0, weight.shape[0], VOCAB_BLOCK)], dim=-1)

    def head(self) -> tuple[RMSNorm, torch.Tensor]:
        """The final norm (compute dtype) and the unembedding matrix (stored dtype), read once."""
        if self._head is None:
            norm = RMSNorm(self.config.hidden_size, self.config.rms_norm_eps).to(self.device, self.dtype)
            norm.hook_normalized.name = "ln_final.hook_normalized"
            norm.weight.data.copy_(self.checkpoint.array("model.norm.weight"))
            name = "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"
            self._head = norm.eval(), self.checkpoint.array(name).to(self.device)
        return self._head

    def _embed(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings of every batch's ids, reading only the rows they use (the inner chunks holding them), once
        for all batches."""
        rows, index = torch.unique(torch.cat([ids.reshape(-1).cpu() for ids in batches]), return_inverse=True)
        table = self.checkpoint.run.trajectory("model.embed_tokens.weight").sel(step=self.checkpoint.step)
        values = torch.as_tensor(table[rows.numpy()].values).to(self.device, self.dtype)
        parts = index.to(self.device).split([ids.numel() for ids in batches])
        return [values[part].reshape(*ids.shape, -1) for part, ids in zip(parts, batches)]

    def _block(self, layer: int) -> Block:
        """Block `layer` with its weights read from the store, its hook points named as in the whole model."""
        with torch.device("meta"):
            block = Block(self.config)
        block = block.to_empty(device=self.device)
        state = {name: self.checkpoint.array(f"model.layers.{{layer}}.{name}", slice(layer, layer + 1))[0]
                 for name in block.state_dict()}
        block.load_state_dict({k: v.to(self.dtype) for k, v in state.items()})
        for path, module in block.named_modules():
            if isinstance(module, HookPoint):
                module.name = _tl_name(f"model.layers.{layer}.{path}")
        return block.to(self.dtype).eval()


class _LayerCache(KVCache):
    """The keys and values of one block (a streamed pass builds its blocks anew, so they are not the key)."""

    def extend(self, module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().extend(None, k, v)
