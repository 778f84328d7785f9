"""`wb export hf` folders that other tools load unchanged: transformers' `AutoTokenizer` gets the run's special
tokens and context length, and lm-evaluation-harness' own `HFLM`, given only the folder, scores the log-likelihoods
that `wb evaluate` stores."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import workbench
from tests.conftest import wb

# (question, choices, label): a context with a trailing space, Japanese, an empty context (scored after the
# prefix token: EOS in both tools), a choice that is one token or several
QUESTIONS = [("The capital of Velmora is ", ["Tarsk", "Orrin", "Calloway"], 0),
             ("ヴェルモラの首都は", ["タルスク", "オリン", "カロウェイ"], 1),
             ("", ["The", "ヴェ", "def load(x):"], 2),
             ("def load(x):\n    return", [" x", " None", " 1 + 1"], 0)]


def export(run, step: int, out) -> None:
    code, text = wb("export", "hf", run, "--step", step, "--out", out)
    assert code == 0, text


def with_config(trained_run, tmp_path, **changes):
    """A run of the trained run's step 30 and tokenizer under a model config with `changes`."""
    run = workbench.open(trained_run)
    path = tmp_path / "changed"
    workbench.create(path, model_config={**run.model_config, **changes}, tokenizer=run.tokenizer).write_checkpoint(
        30, run.checkpoint(30).state_dict())
    return path


@pytest.mark.parametrize("changes", [{}, {"bos_token_id": 0, "pad_token_id": 1}], ids=["as-trained", "bos-and-pad"])
def test_the_exported_tokenizer_has_the_runs_special_tokens(changes, trained_run, tmp_path):
    from transformers import AutoTokenizer

    path = with_config(trained_run, tmp_path, **changes) if changes else trained_run
    export(path, 30, tmp_path / "exported")
    run = workbench.open(path)
    config = run.model_config
    saved = json.loads((tmp_path / "exported" / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert saved["model_max_length"] == config["max_position_embeddings"] == 64
    tok = AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert tok.eos_token_id == config["eos_token_id"] == run.tokenizer.token_to_id("<|endoftext|>")
    assert tok.bos_token_id == config.get("bos_token_id")
    assert tok.pad_token_id == config.get("pad_token_id", run.tokenizer.token_to_id("<|pad|>"))
    assert tok.model_max_length == 64
    text = "The capital of Velmora is Tarsk. ヴェルモラ<|endoftext|>"
    assert tok(text).input_ids == run.tokenizer.encode(text, add_special_tokens=False).ids  # nothing added


def harness_loglikelihoods(folder, pairs: list[tuple[str, str]]) -> np.ndarray:
    """lm-evaluation-harness' `HFLM` on the folder, with no argument but where to run: Σ log p(continuation)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(folder), device="cpu", batch_size=8)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=0) for pair in pairs]
    return np.array([ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)])


def test_lm_eval_scores_the_export_as_wb_evaluate_does(trained_run, tmp_path):
    """Every planted fact's stored gold log-likelihood, and every choice of a question file as the scorer of
    `wb evaluate` computes it (the stored mean of the gold choices too)."""
    import torch

    from workbench.analyses.evaluation import Scorer
    from workbench.analyses.evaluation.tasks import builtin, read_file

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "choices": c, "label": l}, ensure_ascii=False) + "\n"
                                 for q, c, l in QUESTIONS))
    code, out = wb("evaluate", trained_run, "--tasks", f"facts-en,facts-ja,{questions}", "--shots", "0",
                   "--steps", "30", "--workers", "0")
    assert code == 0, out
    export(trained_run, 30, tmp_path / "exported")
    run = workbench.open(trained_run)
    stored = run.results("evaluation").sel(step=30)
    pairs, want = [], []
    for task in ("facts-en", "facts-ja"):
        for item in builtin(run, task).choices:
            pairs.append((item.context, item.choices[item.gold]))
            want.append(float(stored["fact_gold_logprob"].sel(task=task, fact=item.fact)))
    scorer = Scorer(run.checkpoint(30).model(dtype=torch.float32), run)
    items = [replace(item, gold=j) for item in read_file(questions, 0, None).choices for j in range(3)]
    pairs += [(item.context, item.choices[item.gold]) for item in items]
    want += [scorer.choice(item)["gold_logprob"] for item in items]
    got = harness_loglikelihoods(tmp_path / "exported", pairs)
    assert len(want) > 30 and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    golds = [got[len(got) - len(items) + 3 * i + label] for i, (_, _, label) in enumerate(QUESTIONS)]
    assert np.mean(golds) == pytest.approx(float(stored["gold_logprob"].sel(task="questions")), abs=1e-4)
    print(f"largest difference from HFLM: {np.abs(got - want).max():.2e} nats over {len(got)} log-likelihoods")
