"""Task evaluation: multiple-choice scores against transformers' log-likelihoods on the same items, generation
scores by hand, the task-file formats, the lm-evaluation-harness bridge, the built-in fact tasks and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import workbench
from tests.conftest import wb
from workbench.analysis import analyze
from workbench.analyses.evaluation import metrics
from workbench.analyses.evaluation.tasks import LLMJP_SYSTEM, read_file
from workbench.errors import MissingData, UsageError

QUESTIONS = [("The capital of Velmora is", [" Tarsk", " Orrin", " Calloway"], 0),
             ("ヴェルモラの首都は", ["タルスク", "オリン", "カロウェイ"], 0),
             ("def load(x):\n    return", [" x", " None", " 1 + 1"], 0),
             ("The cat sat on the", [" mat", " moon"], 1),
             ("猫がマットの上に", ["座った", "いない", "泳いだ"], 2)]


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(json.dumps({"question": q, "choices": c, "label": l}, ensure_ascii=False)
                              for q, c, l in QUESTIONS) + "\n")
    return path


def hf_loglikelihoods(model, tok, context: str, choices: list[str]) -> np.ndarray:
    """Σ log p(continuation tokens | context) by a plain forward pass of context + choice (no cache)."""
    out = []
    ctx = tok.encode(context, add_special_tokens=False).ids
    for c in choices:
        whole = tok.encode(context + c, add_special_tokens=False).ids
        cont = whole[len(ctx):]
        with torch.no_grad():
            logp = model(torch.tensor([ctx + cont])).logits[0].double().log_softmax(-1)
        out.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
    return np.array(out)


def test_multiple_choice_scores_equal_transformers_log_likelihoods(trained_run, questions):
    analyze(trained_run, ["evaluation"], steps=[30], workers=0, progress=False,
            params={"evaluation": {"tasks": [str(questions)], "shots": 0}})
    run = workbench.open(trained_run)
    got = run.results("evaluation").sel(step=30, task="questions")
    model, tok = run.checkpoint(30).to_hf(dtype=torch.float32), run.tokenizer
    correct, chars, nbytes, gold = [], [], [], []
    for q, choices, label in QUESTIONS:
        ll = hf_loglikelihoods(model, tok, q, choices)
        correct.append(np.argmax(ll) == label)
        chars.append(np.argmax(ll / [len(c) for c in choices]) == label)
        nbytes.append(np.argmax(ll / [len(c.encode()) for c in choices]) == label)
        gold.append(ll[label])
    assert float(got["accuracy"]) == np.mean(correct)
    assert float(got["accuracy_chars"]) == np.mean(chars)
    assert float(got["accuracy_bytes"]) == np.mean(nbytes)
    np.testing.assert_allclose(float(got["gold_logprob"]), np.mean(gold), rtol=1e-6)
    bits = -np.sum(gold) / math.log(2) / sum(len(c[l].encode()) for _, c, l in QUESTIONS)
    np.testing.assert_allclose(float(got["bits_per_byte"]), bits, rtol=1e-6)
    assert float(got["chance"]) == pytest.approx(np.mean([1 / len(c) for _, c, _ in QUESTIONS]))
    assert int(got["n_choice"]) == 5 and np.isnan(float(got["exact_match"]))
    np.testing.assert_allclose(float(got["accuracy_stderr"]), np.std(correct, ddof=1) / math.sqrt(5))


def test_generation_scores_by_hand():
    assert metrics.prediction("東京都です\n\n次の質問") == "東京都です"
    assert metrics.prediction("  Ｔａｒｓｋ ") == "  Tarsk "  # NFKC: fullwidth letters become ASCII; not stripped
    assert metrics.exact_match("Tarsk", "Tarsk") == 1.0 and metrics.exact_match("Tarsk.", "Tarsk") == 0.0
    assert metrics.char_f1("東京都", "東京") == pytest.approx(2 * 2 / 5)  # LCS 2 of 3 + 2 characters
    assert metrics.char_f1("new york city", "city york new") == 1.0  # tokens sorted
    assert metrics.char_f1("Tarsk!", "tarsk") == 1.0  # lower case, punctuation dropped
    assert metrics.char_f1("abc", "xyz") == 0.0
    assert metrics.char_f1("ab", "ba") == pytest.approx(2 * 1 / 4)


def test_an_llm_jp_eval_file_gets_its_prompt(tmp_path):
    doc = {"instruction": "質問に答えてください。", "output_length": 8, "metrics": ["exact_match", "char_f1"],
           "few_shots": [{"input": "1+1は?", "output": "2"}, {"input": "2+2は?", "output": "4"}],
           "samples": [{"input": "3+3は?", "output": "6"}]}
    path = tmp_path / "jsquad.json"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    task = read_file(path, shots=1, template=None)
    (item,) = task.generations
    assert task.name == "jsquad" and item.answer == "6" and item.output_length == 8
    assert item.prompt == (f"{LLMJP_SYSTEM}\n\n### 指示:\n質問に答えてください。\n\n### 入力:\n1+1は?\n\n### 応答:\n2"
                           "\n\n### 入力:\n3+3は?\n\n### 応答:\n")


def test_a_question_file_with_a_template_and_shots(questions):
    task = read_file(questions, shots=2, template="Q: {question}\nA:")
    assert len(task.choices) == 3
    first = task.choices[0]
    assert first.context == ("Q: The capital of Velmora is\nA: Tarsk\n\nQ: ヴェルモラの首都は\nA:タルスク\n\n"
                             "Q: def load(x):\n    return\nA:")
    assert first.choices == (" x", " None", " 1 + 1") and first.gold == 0


def test_built_in_fact_tasks_with_exposure(trained_run):
    run = workbench.open(trained_run)
    analyze(run, ["evaluation"], steps=[0, 30], workers=0, progress=False)
    ds = workbench.open(trained_run).results("evaluation")
    assert list(ds["task"].values) == ["facts-en", "facts-ja", "facts-en2ja", "facts-ja2en"]
    facts = run.table("data/facts")
    assert ds.sizes["fact"] == len(facts)
    one_language = {f: json.loads(c) for f, c in zip(facts["id"], facts["copies"])}
    en_only = sorted(f for f, c in one_language.items() if c["en"] and not c["ja"])
    asked = ds["fact_correct"].sel(step=30, task="facts-en2ja").dropna("fact")["fact"].values.tolist()
    assert sorted(asked) == en_only
    assert int(ds["n_generation"].sel(step=30, task="facts-en")) == sum(1 for c in one_language.values() if c["en"])
    # exposures: batches holding the fact's statement, from the data order
    times = ds["fact_times_seen"].sel(step=30)
    assert (times.values >= 0).all() and (ds["fact_times_seen"].sel(step=0).values == 0).all()
    assert np.isnan(ds["fact_steps_since_seen"].sel(step=0).values).all()


def test_bad_input_is_named(trained_run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "label": 0}\n{"question": "q", "choices": ["a", "b"], "label": 5}\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2: label 5 is not the index of one of the 2 choices"):
        read_file(bad, 0, None)
    bad.write_text('{"question": "q", "choices": ["a", "b"], "label": 0}\n{oops\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2: not a JSON object"):
        read_file(bad, 0, None)
    broken = tmp_path / "broken.json"
    broken.write_text('{"instruction": "x",\n "samples": [}')
    with pytest.raises(UsageError, match=r"broken.json:2: not valid JSON"):
        read_file(broken, 0, None)
    broken.write_text(json.dumps({"instruction": "x", "metrics": ["bleu_ja"], "samples": [{"input": "a", "output": "b"}]}))
    with pytest.raises(UsageError, match="metric 'bleu_ja' is not supported; supported: exact_match, char_f1"):
        read_file(broken, 0, None)
    code, out = wb("evaluate", trained_run, "--tasks", "facts-fr", "--workers", "0")
    assert code == 2 and "facts-en, facts-ja, facts-en2ja, facts-ja2en" in out and len(out.strip().splitlines()) == 1
    run = workbench.open(trained_run)
    imported = tmp_path / "imported"
    workbench.create(imported, model_config=run.model_config, tokenizer=run.tokenizer).write_checkpoint(
        30, run.checkpoint(30).state_dict())
    code, out = wb("evaluate", imported, "--tasks", "facts-en", "--workers", "0")
    assert code == 1 and "give a task file" in out and len(out.strip().splitlines()) == 1
    with pytest.raises(MissingData, match="facts-en"):
        analyze(imported, ["evaluation"], params={"evaluation": {"tasks": ["facts-en"]}}, workers=0)
    long = tmp_path / "long.jsonl"  # the trained run's window is 64 positions
    long.write_text(json.dumps({"question": "the cat " * 40, "choices": ["a", "b"], "label": 0}) + "\n")
    code, out = wb("evaluate", trained_run, "--tasks", long, "--shots", "0", "--workers", "0")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "evaluation task long, item 1: its context of" in out and "window of 64 positions" in out
    assert "evaluation" not in workbench.open(trained_run).stored_results()


def test_the_harness_bridge_agrees_with_the_native_scorer(trained_run, questions, tmp_path):
    from workbench.analyses.evaluation import Scorer, harness
    from workbench.analyses.evaluation.tasks import read_file as read

    tasks = tmp_path / "yaml"
    tasks.mkdir()
    (tasks / "wb_questions.yaml").write_text(harness.questions_task("wb_questions", questions))
    run = workbench.open(trained_run)
    results, choices = harness.run(run.checkpoint(30), ["wb_questions"], str(tasks))
    native = Scorer(run.checkpoint(30).model(dtype=torch.float32), run)
    ours = [native.choice(item)["choice"] for item in read(questions, 0, None).choices]
    assert choices["wb_questions"] == ours
    assert results["wb_questions"]["acc,none"] == pytest.approx(np.mean([c == l for c, (_, _, l) in zip(ours, QUESTIONS)]))
    analyze(trained_run, ["evaluation"], steps=[30], workers=0, progress=False,
            params={"evaluation": {"tasks": [str(questions)], "shots": 0, "harness_tasks": ["wb_questions"],
                                   "harness_include": str(tasks)}})
    ds = workbench.open(trained_run).results("evaluation").sel(step=30)
    assert float(ds["accuracy"].sel(task="wb_questions")) == float(ds["accuracy"].sel(task="questions"))
