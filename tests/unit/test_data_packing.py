"""Packing into rows, the held-out split and the batch order (restartable, epoch-aware)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from training.data.packing import batch_at, batches, epoch_of, pack, split_heldout
from training.data.synthetic import generate

EOS, PAD = 256, 257  # token ids here are the UTF-8 bytes of the text


@pytest.fixture(scope="module")
def corpus():
    return generate(seed=3, n_documents=150, fact_copies=(2,), canary_frequencies=(1, 2, 4, 8))


@pytest.fixture(scope="module")
def split(corpus):
    return split_heldout(corpus.documents, fraction=0.1, seed=5, keep_in_train=corpus.planted_document_ids())


@pytest.fixture(scope="module")
def token_ids(corpus, split):
    train, _ = split
    by_id = {d.id: d for d in corpus.documents}
    return {i: list(by_id[i].text.encode("utf-8")) for i in train}


@pytest.fixture(scope="module")
def packed(token_ids):
    return pack(token_ids, seq_len=63, eos_id=EOS, seed=11, pad_id=PAD)


def rebuild(pieces, token_ids, width, eos, pad):
    """A row from its pieces, following the documented convention."""
    row = []
    for doc, offset, length in pieces:
        tokens = token_ids[doc]
        row += tokens[offset : offset + length]
        if offset + length == len(tokens):
            row.append(eos)
    row = row[:width]
    return row + [pad] * (width - len(row))


def test_rows_rebuild_from_their_spans(packed, token_ids):
    assert packed.tokens.shape == (len(packed), 64) and packed.tokens.dtype == torch.int32
    for row, pieces in zip(packed.tokens.tolist(), packed.spans):
        assert pieces and rebuild(pieces, token_ids, 64, EOS, PAD) == row
    assert sum(1 for row in packed.tokens.tolist() for t in row if t == PAD) == packed.n_padding < 64
    assert packed.tokens[:-1].ne(PAD).all()  # only the last row is padded


def test_document_ending_at_a_row_boundary():
    packed = pack({4: list(range(8))}, seq_len=7, eos_id=99, seed=0, pad_id=-1)
    assert packed.tokens.tolist() == [list(range(8)), [99] + [-1] * 7]
    assert packed.spans == [[(4, 0, 8)], [(4, 8, 0)]]
    empty = pack({1: [], 2: [5]}, seq_len=3, eos_id=9, seed=0)
    assert sorted(p for row in empty.spans for p in row) == [(1, 0, 0), (2, 0, 1)]


def epoch_rows(packed, batch_size, epoch):
    """The rows of one epoch as served by `batches` (steps may straddle epochs)."""
    n = len(packed)
    first, last = epoch * n, (epoch + 1) * n  # global row indices
    rows = []
    for step in range(first // batch_size, -(-last // batch_size)):
        batch = batch_at(packed, batch_size, step)
        for position in range(batch_size):
            if first <= step * batch_size + position < last:
                rows.append((batch.tokens[position].tolist(), [s for s in batch.spans if s["position"] == position]))
    return rows


def test_each_training_token_once_per_epoch(packed, token_ids):
    for epoch in (0, 1):
        seen = Counter()
        rows = epoch_rows(packed, batch_size=5, epoch=epoch)
        assert len(rows) == len(packed)
        for tokens, spans in rows:
            pieces = [(s["document_id"], s["offset"], s["length"]) for s in spans]
            assert rebuild(pieces, token_ids, 64, EOS, PAD) == tokens
            for doc, offset, length in pieces:
                seen.update((doc, i) for i in range(offset, offset + length))
        assert seen == Counter((doc, i) for doc, ids in token_ids.items() for i in range(len(ids)))
        served = Counter(t for tokens, _ in rows for t in tokens)
        assert served[EOS] == len(token_ids) and served[PAD] == packed.n_padding  # one EOS per document


def test_epochs_reshuffle(packed):
    first, second = packed.sequence_order(0), packed.sequence_order(1)
    assert sorted(first) == sorted(second) == list(range(len(packed)))
    assert first != second and first != list(range(len(packed)))
    assert epoch_of(packed, 4, 0) == 0 and epoch_of(packed, 4, len(packed) // 4 + 1) == 1


def test_heldout_documents_never_appear(corpus, split, packed, token_ids):
    train, heldout = split
    held = {i for ids in heldout.values() for i in ids}
    assert held and not held & set(train) and sorted(held | set(train)) == [d.id for d in corpus.documents]
    for domain, ids in heldout.items():
        domain_docs = [d for d in corpus.documents if d.domain == domain]
        assert len(ids) == max(1, round(0.1 * len(domain_docs)))
        assert all(corpus.documents[i].domain == domain for i in ids)
    assert not held & corpus.planted_document_ids()
    served = {s["document_id"] for b in batches(packed, 8, n_steps=2 * len(packed) // 8) for s in b.spans}
    assert served == set(token_ids) and not served & held
    again = split_heldout(corpus.documents, fraction=0.1, seed=5, keep_in_train=corpus.planted_document_ids())
    assert again == split
    _, heldout = split_heldout(corpus.documents, seed=5, n_per_domain=3)
    assert all(len(ids) == 3 for ids in heldout.values())
    everything = [d.id for d in corpus.documents]
    _, heldout = split_heldout(corpus.documents, seed=5, n_per_domain=3, keep_in_train=everything[2:])
    assert sum(map(len, heldout.values())) == 2  # only what keep_in_train leaves can be held out


def test_restart_from_any_step(packed):
    steps_per_epoch = len(packed) // 6
    full = list(batches(packed, 6, n_steps=3 * steps_per_epoch))
    for k in (0, 1, steps_per_epoch - 1, steps_per_epoch, 2 * steps_per_epoch + 1):
        resumed = list(batches(packed, 6, start_step=k, n_steps=3))
        assert [b.step for b in resumed] == list(range(k, k + 3))
        for a, b in zip(resumed, full[k : k + 3]):
            assert a.step == b.step and torch.equal(a.tokens, b.tokens) and a.spans == b.spans
    batch = full[0]
    assert batch.tokens.dtype == torch.int64 and batch.tokens.shape == (6, 64)
    assert set(batch.spans[0]) == {"document_id", "offset", "length", "position"}
    assert sorted({s["position"] for s in batch.spans}) == list(range(6))


def test_packing_is_deterministic(token_ids, packed):
    again = pack(token_ids, seq_len=63, eos_id=EOS, seed=11, pad_id=PAD)
    assert torch.equal(again.tokens, packed.tokens) and again.spans == packed.spans
    other = pack(token_ids, seq_len=63, eos_id=EOS, seed=12, pad_id=PAD)
    assert other.document_order != packed.document_order
    shuffled = dict(random.Random(0).sample(sorted(token_ids.items()), len(token_ids)))
    assert pack(shuffled, seq_len=63, eos_id=EOS, seed=11, pad_id=PAD).spans == packed.spans  # dict order ignored
