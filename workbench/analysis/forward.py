"""What the forward-pass analyses share: the evaluation set cut into batches, one forward pass whose
activations stream into running statistics, and logits read out of the residual stream in chunks (the model
of a step is `StepContext.model()`).

Evaluation batches are made as the trainer packs its data: per domain, the documents (in evaluation-set
order) are laid end to end, each followed by the tokenizer's end-of-text token when it has one, and the
stream is cut into rows of `seq_len + 1` tokens that overlap by one (inputs `row[:-1]`, targets `row[1:]`,
so every token is a target once). A domain's last, shorter row is dropped unless it is the domain's only
one. Every statistic is over these rows, so numbers of different steps are over the same tokens;
`Batch.first` numbers the tokens across all batches (the `token` coordinate of per-token results).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from workbench.analysis.base import StepContext

DEFAULT_SEQ_LEN = 512  # for a run without a training config (imported): capped by the model's context
READOUT_TOKENS = 2048  # tokens unembedded at once: bounds the logits to READOUT_TOKENS x vocab floats


@dataclass(frozen=True)
class EvalParams:
    """The evaluation-batch parameters of the forward analyses that read the whole evaluation set (their
    `Params` extend it)."""

    seq_len: int | None = None  # row length; default: the run's training seq_len
    batch_size: int = 8
    max_tokens: int | None = None  # per domain; default: every evaluation token


@dataclass(frozen=True)
class Batch:
    ids: torch.Tensor  # [batch, pos] int64 model inputs
    targets: torch.Tensor  # [batch, pos] the next tokens
    domain: str
    first: int  # index of ids[0, 0] among all evaluation tokens (row-major over batches)

    @property
    def n_tokens(self) -> int:
        return self.ids.numel()


def seq_len(ctx: "StepContext", requested: int | None = None) -> int:
    """Row length: `requested`, else the run's training `seq_len`, else `DEFAULT_SEQ_LEN`; at most the model's
    context length."""
    config = ctx.run.model_config
    context = config.get("max_position_embeddings") or config.get("n_positions") or config.get("n_ctx")
    n = requested or (ctx.run.train_config or {}).get("seq_len") or DEFAULT_SEQ_LEN
    return min(int(n), int(context)) if context else int(n)


def batches(ctx: "StepContext", length: int, batch_size: int, max_tokens: int | None = None) -> list[Batch]:
    """The evaluation set as batches of rows (see the module docstring), domains in sorted order; at most
    `max_tokens` input tokens per domain (whole rows)."""
    import torch

    eos = ctx.cached("eos_id", lambda: _eos_id(ctx.run))
    streams: dict[str, list[int]] = {}
    for ids, domain in zip(ctx.eval_tokens(), ctx.eval_set.domains):
        streams.setdefault(domain, []).extend(ids + ([eos] if eos is not None else []))
    out, first = [], 0
    for domain in sorted(streams):
        rows = _rows(streams[domain], length, max_tokens)
        for i in range(0, len(rows), batch_size):
            part = torch.tensor(rows[i: i + batch_size], dtype=torch.int64)
            b = Batch(part[:, :-1], part[:, 1:], domain, first)
            out.append(b)
            first += b.n_tokens
    return out


def positions(batches: list[Batch], tokens: np.ndarray) -> np.ndarray:
    """The position in its row of each evaluation token index in `tokens`."""
    firsts = np.array([b.first for b in batches])
    lengths = np.array([b.ids.shape[1] for b in batches])
    i = np.searchsorted(firsts, tokens, side="right") - 1
    return (tokens - firsts[i]) % lengths[i]


def eval_batches(ctx: "StepContext", params: EvalParams) -> list[Batch]:
    """`batches` with an analysis' `EvalParams`."""
    return batches(ctx, seq_len(ctx, params.seq_len), params.batch_size, params.max_tokens)


def _rows(stream: list[int], length: int, max_tokens: int | None) -> list[list[int]]:
    if len(stream) < 2:
        return []
    if len(stream) - 1 < length:  # the domain's only row, shorter
        return [stream]
    n = (len(stream) - 1) // length
    if max_tokens is not None:
        n = max(1, min(n, max_tokens // length))
    return [stream[i * length: (i + 1) * length + 1] for i in range(n)]


def _eos_id(run) -> int | None:
    from workbench.models.views import hf_tokenizer

    return hf_tokenizer(run).eos_token_id


def residuals(model: torch.nn.Module, ids: torch.Tensor, last_only: bool = False) -> dict[int, torch.Tensor]:
    """The residual stream after every block (or only the last) for token ids `[batch, pos]`, as
    `{layer: [token, d_model]}` with tokens row-major, from a forward pass without the unembedding."""
    from workbench.models.capture import n_layers

    names = [f"blocks.{n_layers(model) - 1}.hook_resid_post"] if last_only else ["blocks.{l}.hook_resid_post"]
    out: dict[int, torch.Tensor] = {}
    stream(model, ids, names, lambda name, x: out.__setitem__(layer_of(name), x.flatten(0, 1)))
    return out


def stream_batches(model, batches: list, names, fn: Callable[..., None]) -> None:
    """The activations `names` of every batch (a `Batch`, or anything with token `ids` [batch, pos]) to
    `fn(batch, name, x)`: batch by batch through a whole model;
    through a streamed model block by block, every batch through a block before the next block is read (the
    statistics that consume them do not depend on the order)."""
    if is_streamed(model):
        model.run([b.ids for b in batches], names, lambda i, name, x: fn(batches[i], name, x))
        return
    for b in batches:
        stream(model, b.ids, names, lambda name, x, b=b: fn(b, name, x))


def final_residuals(model, batches: list[Batch]) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Each batch with its residual stream after the last block `[token, d_model]` (of a whole model one batch
    at a time; of a streamed model after one pass of all batches through the blocks)."""
    if is_streamed(model):
        yield from zip(batches, (x.flatten(0, 1) for x in model.run([b.ids for b in batches])))
        return
    for b in batches:
        (last,) = residuals(model, b.ids, last_only=True).values()
        yield b, last


def token_chunks(n_tokens: int, chunk: int = READOUT_TOKENS) -> list[slice]:
    """Slices of at most `chunk` tokens covering `n_tokens`: read out logits chunk by chunk, so that at most
    `chunk` × vocab float32 logits exist at once."""
    return [slice(i, min(i + chunk, n_tokens)) for i in range(0, n_tokens, chunk)]


def log_probs(model: torch.nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities `[token, vocab]` (float32) read out of a residual stream `[token, d_model]`
    through the final norm and unembedding (of the last block's output: the model's own)."""
    from workbench.models.capture import unembed

    logits = model.unembed(resid) if is_streamed(model) else unembed(model, resid)
    return logits.float().log_softmax(-1)


def stream(model: torch.nn.Module, ids: torch.Tensor, names, fn) -> None:
    """A forward pass of token ids `[batch, pos]` for its activations only (`fn(name, tensor)`), without the
    unembedding."""
    from workbench.models.capture import capture

    capture(model, ids.to(next(model.parameters()).device), names, fn=fn, logits=False)


def is_streamed(model) -> bool:
    from workbench.models.streamed import Streamed

    return isinstance(model, Streamed)


def layer_of(name: str) -> int:
    """The layer of a hook name `blocks.{l}.…`."""
    return int(name.split(".", 2)[1])
