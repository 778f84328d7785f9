"""Conformance of the evaluation with the tools it claims to match, checked against the peers themselves:
`char_f1` against fuzzywuzzy 0.18 + python-Levenshtein (the dev extra) on generated pairs, llm-jp-eval's prediction
rule and dataset layout (`evaluation/test/NAME.json`, shots from `evaluation/train/NAME.json`),
lm-evaluation-harness' own `_encode_pair` at the context boundary, and one UTF-8/BOM policy for task and data
files."""

from __future__ import annotations

import json
import logging
import random
import string
import unicodedata
from types import SimpleNamespace

import numpy as np
import pytest
from fuzzywuzzy import fuzz
from lm_eval.api.model import TemplateLM
from tokenizers import Tokenizer, models

from workbench.analysis import readers
from workbench.analysis.evalset import load_file
from workbench.analyses.evaluation import Scorer, harness, metrics
from workbench.analyses.evaluation.tasks import LLMJP_SYSTEM, Choice, Task, read_file
from workbench.errors import UsageError

# ---------------------------------------------------------------------------------------------- char_f1

POOLS = {
    "ascii": string.ascii_letters + string.digits,
    "punctuation": string.punctuation,
    "latin1": "éñßüÀÉÖçøÿ",
    "latin1 symbols": "¡¿«»°±§¶·×÷",
    "full-width": "ＡＢＣａｂｃ１２３！？（）",
    "kana": "あいうえおかきくけこアイウエオカキクケコ",
    "kanji": "東京都日本語大阪府首都",
    "japanese punctuation": "。、「」・ー〜",
    "emoji": "😀🎉👍🇯🇵",
    "other": "_ĀāŁłİıΣσςẞﬁⅫ\u0301",  # "_", Latin Extended, special casing, NFKC compatibility, a combining mark
}
SPACES = (" ", "  ", "   ", "\t", "\n", "\u3000")
SPECIAL = [("", ""), ("。", "!"), ("café", "cafe"), ("a«b", "ab"), ("ẞ", "ß"), ("  ", "\t"), ("!!!", ""),
           ("", "a"), ("東京都", "東京"), ("new york city", "city york new"), ("ＡＢＣ１２３", "abc123"),
           ("😀", "😀😀"), ("Tarsk!", "tarsk"), ("e\u0301", "é"), ("ÉCOLE", "école")]


def random_text(rng: random.Random) -> str:
    pools = rng.sample(sorted(POOLS), rng.randint(1, 3))
    out = []
    for _ in range(rng.randint(0, 14)):
        out.append(rng.choice(SPACES) if rng.random() < 0.2 else rng.choice(POOLS[rng.choice(pools)]))
    return "".join(out)


def variant(text: str, rng: random.Random) -> str:
    """A near copy: tokens shuffled, characters dropped or changed, case flipped (many similarities near .5 %)."""
    tokens = text.split()
    rng.shuffle(tokens)
    chars = list(" ".join(tokens))
    for _ in range(rng.randint(0, 3)):
        if chars and rng.random() < 0.5:
            del chars[rng.randrange(len(chars))]
        else:
            chars.insert(rng.randint(0, len(chars)), rng.choice(POOLS[rng.choice(sorted(POOLS))]))
    return "".join(chars).swapcase() if rng.random() < 0.3 else "".join(chars)


def golden_pairs(n: int = 2400, seed: int = 17) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = list(SPECIAL)
    while len(pairs) < n:
        a = random_text(rng)
        pairs.append((a, variant(a, rng) if rng.random() < 0.6 else random_text(rng)))
    return pairs


def test_char_f1_equals_fuzzywuzzy_token_sort_ratio_on_generated_pairs():
    """llm-jp-eval scores `fuzz.token_sort_ratio(pred, true) / 100` of its NFKC-normalised texts: equal on every
    pair, to the last digit (the whole-percent rounding is matched)."""
    pairs = golden_pairs()
    assert len(pairs) >= 2000
    wrong = []
    for a, b in pairs:
        pred = unicodedata.normalize("NFKC", a)  # what `metrics.prediction` hands on
        want = fuzz.token_sort_ratio(pred, unicodedata.normalize("NFKC", b)) / 100
        got = metrics.char_f1(pred, b)
        if got != want:
            wrong.append((pred, b, got, want))
    assert not wrong, f"{len(wrong)} of {len(pairs)} pairs differ, e.g. {wrong[:5]}"


def test_char_f1_rounds_as_fuzzywuzzy_at_every_half_percent():
    """Every (length, length, common subsequence) up to 40 characters: the same whole percent as fuzzywuzzy,
    ties (87.5, 62.5, …) included."""
    for n1 in range(1, 41):
        for n2 in range(1, 41):
            for lcs in range(min(n1, n2) + 1):
                a, b = "a" * lcs + "b" * (n1 - lcs), "a" * lcs + "c" * (n2 - lcs)
                assert metrics.char_f1(a, b) == fuzz.token_sort_ratio(a, b) / 100, (n1, n2, lcs)


def test_char_f1_of_the_issue_examples():
    assert metrics.char_f1("。", "!") == 1.0  # both empty after processing: fuzzywuzzy calls them equal
    assert metrics.char_f1("café", "cafe") == 0.86  # é (U+00E9) is deleted by fuzzywuzzy's force_ascii
    assert metrics.char_f1("a«b", "ab") == 1.0  # « deleted, not a separator
    assert metrics.char_f1("ẞ", "ß") == 0.0  # ẞ survives the deletion and lower-cases to ß; ß does not


# ---------------------------------------------------------------------------------------------- predictions

def llmjp_scores(generated: str, output: str) -> tuple[float, float]:
    """llm-jp-eval's scoring of one generation as documented: y_pred = normalize(generated.split("\\n\\n")[0]),
    y_true = normalize(output) (NFKC, neither stripped); exact match and token_sort_ratio / 100."""
    y_pred = unicodedata.normalize("NFKC", generated.split("\n\n")[0])
    y_true = unicodedata.normalize("NFKC", output)
    return float(y_pred == y_true), fuzz.token_sort_ratio(y_pred, y_true) / 100


@pytest.mark.parametrize("generated, output", [
    ("東京都です\n\n次の質問", "東京都"), (" 6", "6"), ("6\n", "6"), ("６", "6"), ("Ｔａｒｓｋ\n\n### 入力:", "Tarsk"),
    ("  Ｔａｒｓｋ ", "Tarsk"), ("\n\n東京", "東京"), ("YES", "ＹＥＳ"), ("ﬁne", "fine"), ("", ""),
    ("a\r\n\r\nb", "a"),
])
def test_generation_scores_as_llm_jp_eval(generated, output):
    pred = metrics.prediction(generated)
    assert (metrics.exact_match(pred, output), metrics.char_f1(pred, output)) == llmjp_scores(generated, output)


def test_the_prediction_is_not_stripped():
    assert metrics.prediction("  Ｔａｒｓｋ \n\nnext") == "  Tarsk "
    assert metrics.exact_match(metrics.prediction(" 6"), "6") == 0.0


# ---------------------------------------------------------------------------------------------- llm-jp-eval layout

def llmjp_layout(root, train_samples: int):
    """`root/evaluation/{test,train}/jsquad.json` as llm-jp-eval's preprocessing writes them."""
    doc = {"instruction": "質問に答えてください。", "output_length": 8, "metrics": ["exact_match", "char_f1"],
           "few_shots": [], "samples": [{"input": "3+3は?", "output": "6"}]}
    shots = [{"input": f"{i}+{i}は?", "output": str(2 * i)} for i in range(1, train_samples + 1)]
    train = dict(doc, samples=shots)
    for split, content in (("test", doc), ("train", train)):
        (root / "evaluation" / split).mkdir(parents=True)
        (root / "evaluation" / split / "jsquad.json").write_text(json.dumps(content, ensure_ascii=False), "utf-8")
    return root / "evaluation" / "test" / "jsquad.json", root / "evaluation" / "train" / "jsquad.json"


def test_shots_of_an_llm_jp_eval_test_file_come_from_its_train_file(tmp_path, caplog):
    test, _ = llmjp_layout(tmp_path, train_samples=3)
    with caplog.at_level(logging.WARNING):
        (item,) = read_file(test, shots=2, template=None).generations
    assert item.prompt == (f"{LLMJP_SYSTEM}\n\n### 指示:\n質問に答えてください。"
                           "\n\n### 入力:\n1+1は?\n\n### 応答:\n2\n\n### 入力:\n2+2は?\n\n### 応答:\n4"
                           "\n\n### 入力:\n3+3は?\n\n### 応答:\n")
    assert not caplog.records


def test_fewer_shots_than_asked_is_a_one_line_warning(tmp_path, caplog):
    test, train = llmjp_layout(tmp_path, train_samples=3)
    with caplog.at_level(logging.WARNING):
        (item,) = read_file(test, shots=5, template=None).generations
    assert item.prompt.count("### 応答:") == 4  # the 3 there are, then the sample
    (record,) = caplog.records
    message = record.getMessage()
    assert str(train.resolve()) in message and "3" in message and "5" in message and "\n" not in message


def test_the_task_fingerprint_follows_its_train_file(tmp_path):
    test, train = llmjp_layout(tmp_path, train_samples=3)
    before = read_file(test, shots=2, template=None).fingerprint
    doc = json.loads(train.read_text("utf-8"))
    doc["samples"][0]["output"] = "3"
    train.write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    assert read_file(test, shots=2, template=None).fingerprint != before


# ---------------------------------------------------------------------------------------------- _encode_pair

def merging_tokenizer() -> Tokenizer:
    """BPE without pre-tokenization: "ab" and " c" merge wherever they occur, the context boundary included."""
    vocab = {"c": 0, "a": 1, "b": 2, " ": 3, "\n": 4, "ab": 5, " c": 6}
    return Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), (" ", "c")]))


def lm_eval_split(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness' own `TemplateLM._encode_pair` for a causal model encoding as the scorer does."""
    stub = SimpleNamespace(backend="causal", tok_encode=lambda s, **_: tok.encode(s, add_special_tokens=False).ids)
    return TemplateLM._encode_pair(stub, context, continuation)


@pytest.mark.parametrize("context, continuation", [
    ("ca", "b c"),  # "ab" merges across the boundary: lm-eval gives it to the context
    ("ca ", "c"),  # the trailing space moves to the continuation, where " c" merges
    ("cab\n ", "ab"), ("c", "ab"), ("a", "bab"),
])
def test_the_context_boundary_is_split_as_lm_evaluation_harness_splits_it(context, continuation):
    tok = merging_tokenizer()
    ours = harness.encode_pair(lambda s: tok.encode(s, add_special_tokens=False).ids, context, continuation)
    assert ours == lm_eval_split(tok, context, continuation)


def test_a_context_longer_than_the_window_is_an_error():
    with pytest.raises(UsageError) as e:
        harness.fit_window(list(range(60)), [[1, 2, 3], [4]], window=62, where="evaluation task questions, item 3")
    message = str(e.value)
    assert "questions, item 3" in message and "60" in message and "3" in message and "62" in message
    assert "\n" not in message
    harness.fit_window(list(range(59)), [[1, 2, 3], [4]], window=62, where="fits exactly")


# ---------------------------------------------------------------------------------------------- UTF-8 / BOM

def question(label: int = 0, text: str = "q") -> bytes:
    return (json.dumps({"question": text, "choices": ["a", "b"], "label": label}, ensure_ascii=False) + "\n").encode()


def test_invalid_utf8_in_a_task_file_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(question() + question() + b'{"question": "caf\xe9", "choices": ["a", "b"], "label": 0}\n')
    with pytest.raises(UsageError, match=r"q\.jsonl:3: .*UTF-8") as e:
        read_file(path, 0, None)
    assert "\n" not in str(e.value)


def test_invalid_utf8_in_an_evaluation_set_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_bytes(b'{"text": "ok"}\n\n{"text": "\xff"}\n')
    with pytest.raises(UsageError, match=r"eval\.jsonl:3: .*UTF-8"):
        load_file(path)


def test_invalid_utf8_in_a_train_file_is_named(tmp_path):
    test, train = llmjp_layout(tmp_path, train_samples=3)
    train.write_bytes(train.read_bytes().replace("2+2".encode(), b"2\xff2"))
    with pytest.raises(UsageError, match=r"train/jsquad\.json:1: .*UTF-8"):
        read_file(test, 2, None)


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + question() + question(1) + question())
    assert [c.gold for c in read_file(path, 0, None).choices] == [0, 1, 0]
    test, _ = llmjp_layout(tmp_path, train_samples=1)
    test.write_bytes(b"\xef\xbb\xbf" + test.read_bytes())
    assert read_file(test, 1, None).generations[0].answer == "6"


def test_lines_end_at_newlines_only(tmp_path):
    """A JSON string may hold U+2028 or U+0085 as they are: they neither end a line nor shift the numbering."""
    path = tmp_path / "q.jsonl"
    path.write_bytes(question(text="a\u2028b\x85c") + question(label=5))
    with pytest.raises(UsageError, match=r"q\.jsonl:2: label 5"):
        read_file(path, 0, None)
    assert [rec["question"] for _, rec in readers.records(path)] == ["a\u2028b\x85c", "q"]



@pytest.fixture
def seen(monkeypatch) -> list:
    """The (context, continuations) the native scorer hands the model, which scores every token 0."""
    calls = []
    monkeypatch.setattr("workbench.models.capture.continuation_logprobs",
                        lambda model, ctx, conts: calls.append((ctx, conts)) or [np.zeros(len(c)) for c in conts])
    return calls


def stub_scorer(tok: Tokenizer, window: int) -> Scorer:
    """The native scorer with `tok` and a model window (its model never reached: see `seen`)."""
    scorer = Scorer.__new__(Scorer)
    scorer.model, scorer.tok, scorer.eos, scorer.context, scorer.prepared = None, tok, None, window, {}
    return scorer


def test_the_scorer_splits_each_choice_as_lm_evaluation_harness(seen):
    tok = merging_tokenizer()
    stub_scorer(tok, window=64).choice(Choice("cab ca ", ("c", "bc", "ab c"), 0))
    want = [lm_eval_split(tok, "cab ca ", c) for c in ("c", "bc", "ab c")]
    assert seen == [(want[0][0], [cont for _, cont in want])]


def test_the_scorer_refuses_a_context_longer_than_the_window(seen):
    task = Task("questions", choices=(Choice("c", ("a", "b"), 0), Choice("cab" * 4, ("c", "ab"), 0)))
    with pytest.raises(UsageError, match=r"^evaluation task questions, item 2: .*8 tokens.*1 tokens.*8 positions"):
        stub_scorer(merging_tokenizer(), window=8).task(task)  # 8 context tokens and a choice of 1
    assert len(seen) == 1  # item 1 was scored, item 2 never reached the model
