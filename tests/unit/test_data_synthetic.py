"""The built-in synthetic corpus: determinism, planted canaries and facts, script annotations."""

from __future__ import annotations

import unicodedata
from collections import Counter

import pytest

from training.data.documents import SCRIPTS, script_of, script_spans
from training.data.synthetic import generate

FREQUENCIES = (1, 2, 4, 8, 16, 32)


@pytest.fixture(scope="module")
def corpus():
    return generate(seed=7, n_documents=400, canary_frequencies=FREQUENCIES, canaries_per_frequency=2)


def independent_script(char: str) -> str:
    """Script class from Unicode categories and character names, written apart from `script_of`."""
    category = unicodedata.category(char)
    if category in ("Zs", "Zl", "Zp") or char in "\t\n\r\x0b\x0c":
        return "space"
    if category == "Nd":
        return "digit"
    if category[0] in "PS":
        return "punct"
    name = unicodedata.name(char, "")
    if name.startswith("HIRAGANA"):
        return "hiragana"
    if "KATAKANA" in name:
        return "katakana"
    if name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")):
        return "kanji"
    if "LATIN" in name and category[0] == "L":
        return "latin"
    return "other"


def test_same_seed_same_corpus(corpus):
    again = generate(seed=7, n_documents=400, canary_frequencies=FREQUENCIES, canaries_per_frequency=2)
    assert [d.to_dict() for d in again.documents] == [d.to_dict() for d in corpus.documents]
    assert again.facts == corpus.facts and again.canaries == corpus.canaries
    other = generate(seed=8, n_documents=400)
    assert [d.text for d in other.documents] != [d.text for d in corpus.documents]


def test_documents_are_well_formed(corpus):
    assert [d.id for d in corpus.documents] == list(range(400))
    counts = Counter(d.domain for d in corpus.documents)
    assert set(counts) == {"en", "ja", "code"} and counts["en"] == counts["ja"] == 160
    for d in corpus.documents:
        assert d.language == d.domain and d.text
    ja = " ".join(d.text for d in corpus.documents if d.domain == "ja")
    assert {"hiragana", "katakana", "kanji"} <= {script_of(c) for c in ja}
    code = "\n".join(d.text for d in corpus.documents if d.domain == "code")
    assert "def " in code and "return" in code


def test_canary_copies_match_declared_frequencies(corpus):
    texts = [d.text for d in corpus.documents]
    assert sorted(c["copies"] for c in corpus.canaries) == sorted(f for f in FREQUENCIES for _ in range(2))
    for canary in corpus.canaries:
        body = canary["text"].removeprefix("canary ")
        assert canary["text"].startswith("canary ") and 12 <= len(body) <= 20
        # independent count: occurrences in the raw text, not the recorded placement
        assert sum(t.count(canary["text"]) for t in texts) == canary["copies"]
        holders = Counter(i for i, t in enumerate(texts) for _ in range(t.count(canary["text"])))
        assert holders == Counter(canary["document_ids"])
        spans = [(d, s) for d in corpus.documents for s in d.spans if s.label == f"canary:{canary['id']}"]
        assert len(spans) == canary["copies"]
        assert all(d.text[s.start : s.end] == canary["text"] for d, s in spans)


def test_facts_planted_in_both_languages_or_in_one(corpus):
    assert len(corpus.facts) >= 5
    languages = [tuple(lang for lang in ("en", "ja") if fact["copies"][lang]) for fact in corpus.facts]
    assert languages.count(("en", "ja")) >= 5 and languages.count(("en",)) >= 2 and languages.count(("ja",)) >= 2
    for fact in corpus.facts:
        for lang in ("en", "ja"):
            holders = [d for d in corpus.documents if fact["text"][lang] in d.text]
            assert len(holders) == fact["copies"][lang] == len(fact["document_ids"][lang])
            assert fact["copies"][lang] == 0 or fact["copies"][lang] >= 2
            assert all(d.domain == lang for d in holders)
            assert fact["text"][lang].startswith(fact["prompt"][lang])
            assert fact["object"][lang] in fact["answer"][lang]
            for d in holders:
                spans = [s for s in d.spans if s.label == f"fact:{fact['id']}"]
                assert [d.text[s.start : s.end] for s in spans] == [fact["text"][lang]] * len(spans) != []
    japanese = corpus.facts[0]["text"]["ja"]
    assert {script_of(c) for c in japanese} >= {"katakana", "kanji", "hiragana"}


def test_script_of_agrees_with_unicodedata(corpus):
    sample = set("".join(d.text for d in corpus.documents[:200]))
    sample |= set("aZéÅßΩｚＡ０９٣ あんゝゞ アンーヽヾｱｰﾞ 漢字猫々 。、「」・！？.,;:()[]{}\"'#+-*/=<>€$ \t\n\u3000")
    sample.discard("々")  # an iteration mark, kanji by block but not named as an ideograph
    assert len(sample) > 100
    for char in sample:
        assert script_of(char) == independent_script(char), (char, unicodedata.name(char, "?"))
    assert script_of("々") == "kanji"


def test_script_spans_tile_the_text(corpus):
    for d in corpus.documents[:50]:
        spans = d.spans_of("script")
        assert spans[0].start == 0 and spans[-1].end == len(d.text)
        assert all(a.end == b.start and a.label != b.label for a, b in zip(spans, spans[1:]))
        for s in spans:
            assert s.label in SCRIPTS
            assert {script_of(c) for c in d.text[s.start : s.end]} == {s.label}
    assert script_spans("私はTom", offset=10)[0].start == 10


def test_planted_document_ids(corpus):
    planted = corpus.planted_document_ids()
    for d in corpus.documents:
        has = any(s.kind in ("fact", "canary") for s in d.spans)
        assert has == (d.id in planted)
