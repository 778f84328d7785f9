"""Byte-level BPE trained on the corpus, and the maps between characters and tokens.

Byte-level, so every string round-trips (`decode(encode(text)) == text`, Japanese included) and nothing is
ever out of vocabulary. Special tokens written in a document's text are encoded as plain text
(`encode_special_tokens = True`): only the packer inserts `<|endoftext|>`.

Offsets: `tokenizer.encode(text).offsets` are *character* offsets into `text`. A token holding only some
of a character's UTF-8 bytes (a kanji split in two) gets that whole character's range, so every token
maps to the characters it came from.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from tokenizers import Encoding, Tokenizer, decoders, models, pre_tokenizers, trainers

from training.data.documents import Document, Span

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    special_tokens: Sequence[str] = (EOS, PAD),
    min_frequency: int = 2,
) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `texts`; the same texts in the same order give the same one.

    Special tokens take the first ids (`<|endoftext|>` = 0, `<|pad|>` = 1 with the defaults).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def tokenizer_from_str(json_text: str) -> Tokenizer:
    """A tokenizer saved with `Tokenizer.to_str()`, set up as `train_tokenizer` sets it up."""
    tokenizer = Tokenizer.from_str(json_text)
    tokenizer.encode_special_tokens = True  # not part of the saved JSON
    return tokenizer


def token_id(tokenizer: Tokenizer, token: str = EOS) -> int:
    """The id of a (special) token; `ValueError` when the vocabulary lacks it."""
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no token {token!r}")
    return found


def encode_documents(tokenizer: Tokenizer, documents: Sequence[Document]) -> dict[int, list[int]]:
    """Token ids of each document, by document id (no special tokens added)."""
    tokenizer.encode_special_tokens = True
    encodings = tokenizer.encode_batch([d.text for d in documents], add_special_tokens=False)
    return {d.id: e.ids for d, e in zip(documents, encodings)}


def chars_per_token(tokenizer: Tokenizer, documents: Sequence[Document], by: str = "domain") -> dict[str, float]:
    """Characters per token of each domain (or `by="language"`): higher means better compression."""
    tokenizer.encode_special_tokens = True
    encodings = tokenizer.encode_batch([d.text for d in documents], add_special_tokens=False)
    chars: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for document, encoding in zip(documents, encodings):
        key = getattr(document, by)
        chars[key] = chars.get(key, 0) + len(document.text)
        tokens[key] = tokens.get(key, 0) + len(encoding.ids)
    return {key: chars[key] / tokens[key] for key in sorted(chars) if tokens[key]}


def token_labels(
    encoding: Encoding | Sequence[tuple[int, int]],
    spans: Iterable[Span],
    kind: str = "script",
    default: str = "none",
) -> list[str]:
    """For each token, the label of the span of `kind` that covers most of its characters.

    `encoding` is an `Encoding` or its list of character offsets. Ties go to the earlier span; a token
    that covers no character of any such span (a special token, text outside every span) gets `default`.
    With `kind="canary"` a token is labelled `canary:<id>` when most of its characters are the canary's.
    """
    offsets = encoding.offsets if isinstance(encoding, Encoding) else encoding
    chosen = sorted((s for s in spans if s.kind == kind), key=lambda s: (s.start, s.end))
    if not chosen:
        return [default] * len(offsets)
    starts = [s.start for s in chosen]
    longest = max(s.end - s.start for s in chosen)
    labels = []
    for start, end in offsets:
        best, best_overlap = default, 0
        # spans that may overlap [start, end) begin before `end` and after `start - longest`
        k = bisect_left(starts, end) - 1
        while k >= 0 and starts[k] > start - longest:
            span = chosen[k]
            overlap = min(end, span.end) - max(start, span.start)
            if overlap >= best_overlap and overlap > 0:
                best, best_overlap = span.label, overlap
            k -= 1
        labels.append(best)
    return labels
