"""Held-out splits, packing of documents into fixed-length sequences, and the batch order.

Packing: the training documents, in an order shuffled by the seed, are laid end to end, each followed by
one EOS token, and the stream is cut into rows of `seq_len + 1` tokens (inputs `row[:-1]`, targets
`row[1:]`); the last row is filled up with `pad_id`. Every token of every document lands in exactly one
row, so one pass over the rows is one epoch.

Each row records the pieces of documents it is made of, in order, as `(document_id, offset, length)`:
`offset` and `length` count the document's own tokens; EOS is not part of `length`. A piece is followed
by EOS when it reaches the document's end (`offset + length == len(document)`), unless the row is full
by then: that EOS opens the next row as a piece `(document_id, len(document), 0)`. So a row is

    concat(doc[offset:offset + length] + ([EOS] if offset + length == len(doc) else []) for each piece)

cut to `seq_len + 1` tokens, and then filled with `pad_id` (only the last row of the packing has padding).

Batches: the rows of epoch `e` come in the order `sequence_order(e)`, a shuffle seeded by `seed + e`;
epochs follow one another without a gap, and step `s` takes rows `s * batch_size … (s + 1) * batch_size - 1`
of that endless stream, so any step can be computed directly (restart without replay).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from training.data.documents import Document

Piece = tuple[int, int, int]  # (document_id, offset, length) in tokens of the document


def split_heldout(
    documents: Sequence[Document],
    fraction: float = 0.05,
    seed: int = 0,
    *,
    n_per_domain: int | None = None,
    keep_in_train: Collection[int] = (),
) -> tuple[list[int], dict[str, list[int]]]:
    """(training document ids, held-out document ids by domain), chosen per domain by the seed.

    Each domain holds out `n_per_domain` documents, or else `round(fraction * n)` (at least one when
    `fraction > 0`), always leaving one for training. `keep_in_train` ids (documents carrying canaries or
    facts, whose planted counts must hold in training) are never held out, so a domain may hold out fewer.
    Ids come back sorted.
    """
    by_domain: dict[str, list[int]] = {}
    for document in documents:
        by_domain.setdefault(document.domain, []).append(document.id)
    keep = set(keep_in_train)
    train: list[int] = []
    heldout: dict[str, list[int]] = {}
    for domain in sorted(by_domain):
        ids = sorted(by_domain[domain])
        if n_per_domain is not None:
            k = n_per_domain
        else:
            k = max(1, round(fraction * len(ids))) if fraction > 0 else 0
        k = max(0, min(k, len(ids) - 1))
        candidates = [i for i in ids if i not in keep]
        random.Random(f"heldout/{seed}/{domain}").shuffle(candidates)
        chosen = set(candidates[:k])
        heldout[domain] = sorted(chosen)
        train.extend(i for i in ids if i not in chosen)
    return sorted(train), heldout


@dataclass
class PackedData:
    """Rows of `seq_len + 1` tokens and the document pieces each row is made of."""

    tokens: torch.Tensor  # [n_sequences, seq_len + 1] int32, in packing order (not shuffled)
    spans: list[list[Piece]]  # per row, the pieces (document_id, offset, length) in row order
    seq_len: int
    eos_id: int
    pad_id: int
    seed: int
    document_order: list[int]  # document ids in the order they were laid end to end
    n_padding: int  # pad tokens at the end of the last row
    _orders: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def sequence_order(self, epoch: int) -> list[int]:
        """Row indices in the order epoch `epoch` visits them (a shuffle seeded by `seed + epoch`)."""
        if epoch not in self._orders:
            order = list(range(len(self)))
            random.Random(self.seed + epoch).shuffle(order)
            if len(self._orders) >= 4:
                self._orders.pop(next(iter(self._orders)))
            self._orders[epoch] = order
        return self._orders[epoch]

    def steps_per_epoch(self, batch_size: int) -> float:
        """How many steps of `batch_size` rows one pass over the data takes (fractional at a seam)."""
        return len(self) / batch_size


def pack(
    token_ids_by_doc: dict[int, Sequence[int]],
    seq_len: int,
    eos_id: int,
    seed: int,
    pad_id: int | None = None,
) -> PackedData:
    """Pack the documents (shuffled by `seed`) into rows of `seq_len + 1` tokens; see the module doc.

    `pad_id` fills the tail of the last row (default: `eos_id`).
    """
    if seq_len < 1:
        raise ValueError("seq_len must be at least 1")
    if not token_ids_by_doc:
        raise ValueError("nothing to pack: no documents")
    pad_id = eos_id if pad_id is None else pad_id
    width = seq_len + 1
    order = sorted(token_ids_by_doc)
    random.Random(seed).shuffle(order)

    lengths = [len(token_ids_by_doc[d]) for d in order]
    total = sum(lengths) + len(order)
    n_rows = math.ceil(total / width)
    stream = np.full(n_rows * width, pad_id, dtype=np.int64)
    spans: list[list[Piece]] = [[] for _ in range(n_rows)]
    pos = 0  # where the current document starts in the stream
    for doc, n in zip(order, lengths):
        stream[pos : pos + n] = token_ids_by_doc[doc]
        stream[pos + n] = eos_id
        end = pos + n + 1  # past this document's EOS
        g = pos
        while g < end:
            row = g // width
            stop = min(end, (row + 1) * width)
            offset = g - pos
            spans[row].append((doc, offset, max(0, min(stop - pos, n) - offset)))
            g = stop
        pos = end
    tokens = torch.from_numpy(stream.reshape(n_rows, width).astype(np.int32))
    return PackedData(tokens, spans, seq_len, eos_id, pad_id, seed, order, n_rows * width - total)


class Batch(NamedTuple):
    """One training step's rows; unpacks as `(step, tokens, spans)`."""

    step: int
    tokens: torch.Tensor  # [batch, seq_len + 1] int64
    spans: list[dict]  # {"document_id", "offset", "length", "position"}: position = row in the batch


def batch_at(packed: PackedData, batch_size: int, step: int) -> Batch:
    """The batch of step `step`, computed directly (no replay of earlier steps)."""
    n = len(packed)
    rows = []
    for g in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(g, n)
        rows.append(packed.sequence_order(epoch)[i])
    tokens = packed.tokens[rows].long()  # [batch, seq_len + 1]
    spans = [
        {"document_id": doc, "offset": offset, "length": length, "position": position}
        for position, row in enumerate(rows)
        for doc, offset, length in packed.spans[row]
    ]
    return Batch(step, tokens, spans)


def batches(
    packed: PackedData,
    batch_size: int,
    start_step: int = 0,
    n_steps: int | None = None,
) -> Iterator[Batch]:
    """Batches from `start_step` on (`n_steps` of them, or endlessly), reshuffling at each epoch."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    step = start_step
    while n_steps is None or step < start_step + n_steps:
        yield batch_at(packed, batch_size, step)
        step += 1


def epoch_of(packed: PackedData, batch_size: int, step: int) -> int:
    """The epoch the first row of step `step` belongs to."""
    return step * batch_size // len(packed)
