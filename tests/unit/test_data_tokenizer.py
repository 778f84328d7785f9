"""Byte-level BPE: determinism, exact round trips, character offsets, labels of tokens from spans."""

from __future__ import annotations

import pytest

from training.data.documents import Span, script_spans
from training.data.synthetic import generate
from training.data.tokenizer import (
    EOS,
    PAD,
    chars_per_token,
    encode_documents,
    token_id,
    token_labels,
    tokenizer_from_str,
    train_tokenizer,
)

SAMPLES = [
    "吾輩は猫である。名前はまだ無い。",
    "ｶﾀｶﾅ and ＦＵＬＬＷＩＤＴＨ １２３ — “quotes” ✓ 🐈‍⬛",
    "def f(x):\n\treturn x ** 2  # square\r\n",
    "  leading and trailing spaces  ",
    f"text with {EOS} and {PAD} written in it",
    "",
]


@pytest.fixture(scope="module")
def corpus():
    return generate(seed=1, n_documents=240)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer([d.text for d in corpus.documents], vocab_size=700)


def gpt2_byte_decoder() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's bytes_to_unicode), inverted: token character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def test_training_is_deterministic(corpus, tokenizer):
    again = train_tokenizer([d.text for d in corpus.documents], vocab_size=700)
    assert again.to_str() == tokenizer.to_str()
    assert tokenizer.get_vocab_size() <= 700
    assert token_id(tokenizer, EOS) == 0 and token_id(tokenizer, PAD) == 1
    with pytest.raises(ValueError):
        token_id(tokenizer, "<|nope|>")


def test_round_trip(corpus, tokenizer):
    by_domain = {d.domain: d for d in reversed(corpus.documents)}
    assert set(by_domain) == {"en", "ja", "code"}
    ids = encode_documents(tokenizer, list(by_domain.values()))
    for d in by_domain.values():
        assert tokenizer.decode(ids[d.id]) == d.text
    for text in SAMPLES:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(encoding.ids) == text
        assert token_id(tokenizer, EOS) not in encoding.ids  # written specials are plain text
    reloaded = tokenizer_from_str(tokenizer.to_str())
    assert reloaded.encode(SAMPLES[4]).ids == tokenizer.encode(SAMPLES[4]).ids


def test_offsets_are_character_offsets(corpus, tokenizer):
    to_byte = gpt2_byte_decoder()
    texts = [d.text for d in corpus.documents if d.domain == "ja"][:5] + SAMPLES
    split = 0  # tokens holding only part of a character's bytes
    for text in texts:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        pieces = [bytes(to_byte[c] for c in token) for token in encoding.tokens]
        assert b"".join(pieces) == text.encode("utf-8")
        for piece, (start, end) in zip(pieces, encoding.offsets):
            assert start < end and piece in text[start:end].encode("utf-8")
            split += len(piece) < len(text[start:end].encode("utf-8"))
    assert split > 0


def reference_labels(offsets, spans, kind, default):
    """Brute force: the span of `kind` with the largest overlap, the earliest on ties."""
    chosen = sorted((s for s in spans if s.kind == kind), key=lambda s: (s.start, s.end))
    labels = []
    for start, end in offsets:
        overlaps = [(min(end, s.end) - max(start, s.start), -i) for i, s in enumerate(chosen)]
        best = max(overlaps, default=(0, 0))
        labels.append(chosen[-best[1]].label if best[0] > 0 else default)
    return labels


def test_token_labels_match_brute_force(corpus, tokenizer):
    planted = [d for d in corpus.documents if any(s.kind != "script" for s in d.spans)][:30]
    for d in planted + corpus.documents[:20]:
        encoding = tokenizer.encode(d.text, add_special_tokens=False)
        for kind in ("script", "fact", "canary"):
            assert token_labels(encoding, d.spans, kind) == reference_labels(encoding.offsets, d.spans, kind, "none")


def test_token_labels_of_a_canary(corpus, tokenizer):
    canary = corpus.canaries[0]
    d = corpus.documents[canary["document_ids"][0]]
    encoding = tokenizer.encode(d.text, add_special_tokens=False)
    labels = token_labels(encoding, d.spans, kind="canary")
    inside = [i for i, label in enumerate(labels) if label == f"canary:{canary['id']}"]
    assert inside == list(range(inside[0], inside[-1] + 1))  # contiguous
    decoded = tokenizer.decode([encoding.ids[i] for i in inside])
    assert canary["text"].removeprefix("canary ") in decoded
    assert {label.partition(":")[0] for label in labels} == {"none", "canary"}


def test_token_labels_scripts_and_specials():
    text = "猫がTom"
    spans = script_spans(text) + [Span(0, 1, "fact:x")]
    offsets = [(0, 1), (0, 1), (1, 2), (2, 5), (0, 0)]  # a kanji split into two byte tokens, then a special
    assert token_labels(offsets, spans) == ["kanji", "kanji", "hiragana", "latin", "none"]
    assert token_labels(offsets, spans, kind="fact", default="-") == ["fact:x", "fact:x", "-", "-", "-"]
    assert token_labels([(1, 5)], spans) == ["latin"]  # 3 latin characters beat 1 hiragana


def test_chars_per_token(corpus, tokenizer):
    stats = chars_per_token(tokenizer, corpus.documents)
    assert set(stats) == {"en", "ja", "code"} and all(v > 1 for v in stats.values())
    ja = [d for d in corpus.documents if d.domain == "ja"]
    n_tokens = sum(len(tokenizer.encode(d.text, add_special_tokens=False).ids) for d in ja)
    assert stats["ja"] == pytest.approx(sum(len(d.text) for d in ja) / n_tokens)
    assert set(chars_per_token(tokenizer, corpus.documents, by="language")) == {"en", "ja", "code"}
