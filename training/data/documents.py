"""Documents and their ground-truth annotations: character spans with labels, and script classes.

Every corpus (built-in synthetic or local files) yields `Document`s, so the tokenizer, the packer and the
probes see one type. Spans are half-open character ranges `[start, end)` into `Document.text`; labels are
a script class (`SCRIPTS`), `fact:<id>` or `canary:<id>`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

SCRIPTS = ("latin", "hiragana", "katakana", "kanji", "digit", "punct", "space", "other")
"""Script classes of `script_of`; "punct" covers punctuation and symbols (Unicode categories P* and S*)."""


@dataclass(frozen=True)
class Span:
    """A labelled half-open character range `[start, end)` of a document's text."""

    start: int
    end: int
    label: str

    @property
    def kind(self) -> str:
        """"fact", "canary" or "script": what family of annotation the label belongs to."""
        return span_kind(self.label)


@dataclass
class Document:
    """One training document with its ground-truth annotations."""

    id: int
    text: str
    domain: str
    language: str
    spans: list[Span] = field(default_factory=list)

    def spans_of(self, kind: str) -> list[Span]:
        """The spans of one kind ("script", "fact" or "canary")."""
        return [s for s in self.spans if s.kind == kind]

    def to_dict(self) -> dict:
        """A JSON-ready dict (spans as `[start, end, label]` lists)."""
        return {
            "id": self.id,
            "text": self.text,
            "domain": self.domain,
            "language": self.language,
            "spans": [[s.start, s.end, s.label] for s in self.spans],
        }


def span_kind(label: str) -> str:
    """"fact" for `fact:<id>`, "canary" for `canary:<id>`, "script" for everything else."""
    head, sep, _ = label.partition(":")
    return head if sep and head in ("fact", "canary") else "script"


@lru_cache(maxsize=65536)
def script_of(char: str) -> str:
    """The script class of one character, one of `SCRIPTS`.

    Kana and kanji by Unicode block (the prolonged sound mark ー counts as katakana, the middle dot ・ and
    the voicing marks ゛゜ as punctuation, as their Unicode categories say); digits are category Nd;
    latin letters are letters of the Latin blocks, fullwidth ones included.
    """
    o = ord(char)
    if char.isspace():
        return "space"
    if 0x3041 <= o <= 0x3096 or 0x309D <= o <= 0x309F:
        return "hiragana"
    if 0x30A1 <= o <= 0x30FA or 0x30FC <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F:
        return "katakana"
    if (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x323AF
        or o in (0x3005, 0x3007)
    ):
        return "kanji"
    category = unicodedata.category(char)
    if category == "Nd":
        return "digit"
    if category[0] in "PS":
        return "punct"
    if category[0] == "L" and (
        o < 0x0250 or 0x1E00 <= o <= 0x1EFF or 0xFF21 <= o <= 0xFF3A or 0xFF41 <= o <= 0xFF5A
    ):
        return "latin"
    return "other"


_CODE = {label: chr(ord("a") + i) for i, label in enumerate(SCRIPTS)}
_LABEL = {code: label for label, code in _CODE.items()}
_RUN = re.compile(r"(.)\1*", re.S)


def script_spans(text: str, offset: int = 0) -> list[Span]:
    """Maximal runs of one script class in `text`, as spans shifted by `offset`."""
    # one letter per class, then runs of equal letters: C-speed for megabytes of text
    coded = text.translate({ord(ch): _CODE[script_of(ch)] for ch in set(text)})
    return [Span(m.start() + offset, m.end() + offset, _LABEL[m.group(1)]) for m in _RUN.finditer(coded)]


def guess_language(text: str) -> str:
    """"ja" when kana or kanji make up at least a fifth of the letters, else "und" (undetermined)."""
    counts = {"ja": 0, "letters": 0}
    for char in text[:10_000]:
        script = script_of(char)
        if script in ("hiragana", "katakana", "kanji"):
            counts["ja"] += 1
            counts["letters"] += 1
        elif script in ("latin", "other"):
            counts["letters"] += 1
    if counts["letters"] and counts["ja"] * 5 >= counts["letters"]:
        return "ja"
    return "und"
