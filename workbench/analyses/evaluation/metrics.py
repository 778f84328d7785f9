"""Scores of generations as llm-jp-eval defines them, and means with their standard errors.

Followed: llm-jp-eval 1.3 (`src/llm_jp_eval/utils.py`: `normalize`, `get_evaluation_result`'s prediction, the
`exact_match` and `char_f1` metrics), scoring with fuzzywuzzy 0.18 and python-Levenshtein 0.27 (whose `ratio` is
rapidfuzz's Indel similarity). llm-jp-eval is not on PyPI and its source could not be fetched here, so the tests
(tests/unit/test_evaluation_conformance.py) check its documented rule and fuzzywuzzy itself, on generated pairs.

- `prediction`: the generated text up to its first blank line ("\\n\\n"), then NFKC-normalised (llm-jp-eval's
  `normalize`); not stripped, as there: " 6" is not an exact match of "6". The answer is NFKC-normalised too.
- `exact_match`: 1 when prediction and answer are equal.
- `char_f1`: `fuzz.token_sort_ratio(pred, answer) / 100`. Each text is processed as fuzzywuzzy's `full_process`
  with `force_ascii=True` does: the characters U+0080–U+00FF deleted (its `asciidammit`: "café" becomes "caf",
  other non-ASCII characters stay), every other character that is not a letter, digit or "_" replaced by a space,
  lower case, stripped; its whitespace-separated tokens sorted and joined by one space. Two equal texts (two texts
  empty after processing included: "。" and "!") score 1, one empty text 0, else the Indel similarity
  `1 − (len a + len b − 2·LCS) / (len a + len b)` over code points (Japanese, which has no spaces, is compared
  character by character). Rounding: matched exactly. fuzzywuzzy returns `round(100 × similarity)` (Python's
  round, half to even, of that float) and llm-jp-eval divides that integer by 100, so this does the same and its
  scores equal llm-jp-eval's to the last digit rather than within half a percent.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

_LATIN1 = re.compile("[\x80-\xff]")  # what fuzzywuzzy's asciidammit deletes
_NOT_WORD = re.compile(r"(?ui)\W")  # fuzzywuzzy's StringProcessor.regex


def prediction(generated: str) -> str:
    """What llm-jp-eval scores of a generation: the text before its first blank line, NFKC-normalised."""
    return unicodedata.normalize("NFKC", generated.split("\n\n")[0])


def exact_match(pred: str, answer: str) -> float:
    return float(pred == unicodedata.normalize("NFKC", answer))


def char_f1(pred: str, answer: str) -> float:
    return _percent(_sorted_tokens(pred), _sorted_tokens(unicodedata.normalize("NFKC", answer))) / 100


def _sorted_tokens(text: str) -> str:
    """fuzzywuzzy's `_process_and_sort(text, force_ascii=True)`."""
    kept = _NOT_WORD.sub(" ", _LATIN1.sub("", text)).lower().strip()
    return " ".join(sorted(kept.split()))


def _percent(a: str, b: str) -> int:
    """fuzzywuzzy's `ratio` with python-Levenshtein: the similarity as rapidfuzz computes it (so that ties round
    the same way), rounded to a whole percent."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    total = len(a) + len(b)
    return int(round(100 * (1.0 - (total - 2 * _lcs(a, b)) / total)))


def _lcs(a: str, b: str) -> int:
    """Length of the longest common subsequence of code points, bit-parallel (Allison–Dix): one step per
    character of `a` on a bit row as long as `b`."""
    masks: dict[str, int] = {}
    for i, ch in enumerate(b):
        masks[ch] = masks.get(ch, 0) | 1 << i
    full = (1 << len(b)) - 1
    row = full
    for ch in a:
        match = row & masks.get(ch, 0)
        row = ((row + match) | (row - match)) & full
    return len(b) - row.bit_count()


def mean_and_stderr(values) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / √n; NaN below 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
