"""A bridge to lm-evaluation-harness for people who already have its task YAMLs (the optional extra:
`pip install trajectory-workbench[harness]`): `lm_eval.simple_evaluate` on `HFLM` over the checkpoint's
transformers model and the run's tokenizer, tasks found in `include_path` (local YAMLs over local data), offline.
Its scores land in the `evaluation` results under the task's name: `acc` as `accuracy`, `acc_norm` (per
character) as `accuracy_chars`, `acc_bytes` as `accuracy_bytes`, `exact_match` as `exact_match`, with their
standard errors.

The native multiple-choice scorer splits context and continuation as the harness does (`encode_pair`: its
`_encode_pair` for causal models), so the two give the same log-likelihoods; unlike the harness, which cuts a
context that does not fit the model's window from the left without a word, it refuses one (`fit_window`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from workbench.errors import UsageError

QUESTIONS_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: question
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_bytes
"""
NAMES = {"acc": "accuracy", "acc_norm": "accuracy_chars", "acc_bytes": "accuracy_bytes", "exact_match": "exact_match"}


def questions_task(name: str, data: str | Path) -> str:
    """A harness task YAML over a `.jsonl` of `{question, choices, label}` (JCommonsenseQA's shape), split as the
    native scorer splits it (no delimiter between question and choice)."""
    return QUESTIONS_YAML.format(name=name, data=Path(data).absolute())


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-evaluation-harness' `_encode_pair` splits them for a causal
    model: trailing whitespace of the context moves to the continuation, `context + continuation` is encoded whole
    and cut after as many tokens as the context alone encodes to, so a token merging across the boundary counts
    as the context's (and the continuation loses it)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = encode(context)
    return ctx, encode(context + continuation)[len(ctx):]


def fit_window(context: Sequence[int], continuations: Sequence[Sequence[int]], window: int, where: str) -> None:
    """A one-line `UsageError` naming `where` unless the context and its longest continuation fit in `window`
    positions: a context cut to fit would score another item."""
    longest = max(map(len, continuations), default=0)
    if len(context) + longest > window:
        raise UsageError(f"{where}: its context of {len(context)} tokens and a choice of {longest} tokens exceed the "
                         f"model's window of {window} positions; shorten it or ask fewer shots")


def check(include: str | None) -> None:
    """`UsageError` unless lm-evaluation-harness is installed and `include` (if given) is a folder."""
    from importlib.util import find_spec

    if find_spec("lm_eval") is None:
        raise UsageError("harness tasks need lm-evaluation-harness: pip install 'trajectory-workbench[harness]'")
    if include is not None and not Path(include).is_dir():
        raise UsageError(f"harness_include {include!r} is not a folder of task YAMLs")


@contextmanager
def _offline():
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(checkpoint, tasks, include: str | None, batch_size: int = 16) -> tuple[dict, dict]:
    """(`simple_evaluate`'s results per task, the per-item chosen index of each multiple-choice task)."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from workbench.models.views import hf_model, hf_tokenizer

    model = hf_model(checkpoint, dtype=torch.float32, attn_implementation="sdpa")
    lm = HFLM(pretrained=model, tokenizer=hf_tokenizer(checkpoint.run), batch_size=batch_size,
              device=str(next(model.parameters()).device), dtype=torch.float32)
    with _offline():
        out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=TaskManager(include_path=include),
                              log_samples=True, verbosity="ERROR")
    choices = {}
    for task, samples in (out.get("samples") or {}).items():
        ordered = sorted(samples, key=lambda s: s["doc_id"])
        if ordered and ordered[0].get("resps") and isinstance(ordered[0]["resps"][0][0], (list, tuple)):
            choices[task] = [int(np.argmax([r[0][0] for r in s["resps"]])) for s in ordered]
    return out["results"], choices


def evaluate(checkpoint, tasks, include: str | None) -> dict[str, dict]:
    """Rows for `evaluation.dataset`: per harness task, its scores under the workbench's names."""
    results, choices = run(checkpoint, tasks, include)
    rows = {}
    for task in tasks:
        res = results.get(task, {})
        row = {}
        for theirs, ours in NAMES.items():
            if f"{theirs},none" in res:
                row[ours] = float(res[f"{theirs},none"])
                row[f"{ours}_stderr"] = float(res.get(f"{theirs}_stderr,none", np.nan))
        if task in choices:
            row["n_choice"] = len(choices[task])
        rows[task] = row
    return rows
