"""Scores of generations as llm-jp-eval defines them, and means with their standard errors.

- The prediction is the generated text up to its first blank line ("\\n\\n"), NFKC-normalised and stripped; the
  answer NFKC-normalised (llm-jp-eval's `normalize`).
- `exact_match`: 1 when they are equal.
- `char_f1`: fuzzywuzzy's `token_sort_ratio(pred, answer) / 100`, which llm-jp-eval uses: both texts processed as
  fuzzywuzzy's `full_process` does (lower case, every character that is not a letter or digit replaced by a space,
  stripped), their whitespace-separated tokens sorted and joined by one space, then the Indel similarity
  `2·LCS / (len(a) + len(b))` of the two strings (character level, so Japanese, which has no spaces, is compared
  character by character). fuzzywuzzy rounds it to a whole percent; this does not.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

_NOT_WORD = re.compile(r"(?ui)\W")


def prediction(generated: str) -> str:
    """What llm-jp-eval scores of a generation: the text before its first blank line, NFKC-normalised, stripped."""
    return unicodedata.normalize("NFKC", generated.split("\n\n")[0]).strip()


def exact_match(pred: str, answer: str) -> float:
    return float(pred == unicodedata.normalize("NFKC", answer))


def char_f1(pred: str, answer: str) -> float:
    a, b = _sorted_tokens(pred), _sorted_tokens(unicodedata.normalize("NFKC", answer))
    if not a and not b:
        return 0.0  # fuzzywuzzy scores two empty strings 0
    return 2 * _lcs(a, b) / (len(a) + len(b))


def _sorted_tokens(text: str) -> str:
    return " ".join(sorted(_NOT_WORD.sub(" ", text).lower().strip().split()))


def _lcs(a: str, b: str) -> int:
    """Length of the longest common subsequence (one row of the dynamic programme at a time)."""
    if not a or not b:
        return 0
    prev = np.zeros(len(b) + 1, dtype=np.int64)
    bb = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    for ch in np.frombuffer(a.encode("utf-32-le"), dtype=np.uint32):
        cur = np.zeros_like(prev)
        match = prev[:-1] + (bb == ch)
        for j in range(1, len(prev)):  # cur[j] = max(prev[j], cur[j-1], prev[j-1] + match)
            cur[j] = max(prev[j], cur[j - 1], match[j - 1])
        prev = cur
    return int(prev[-1])


def mean_and_stderr(values) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / √n; NaN below 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
