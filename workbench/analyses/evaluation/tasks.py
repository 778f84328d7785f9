"""Evaluation tasks: multiple-choice items (a context and its choices) and generation items (a prompt, an answer
and how many tokens to generate), built from the run's planted facts or read from task files.

Built in (from `data/facts`, nothing downloaded): `facts-en` and `facts-ja` ask every fact planted in that
language, in that language: a cloze (the statement up to its object; the choices: every object of the same
relation in that language) and a generation (as many tokens as the answer has). `facts-en2ja` asks the facts
planted in English only, in Japanese; `facts-ja2en` the facts planted in Japanese only, in English.

Files (any run), named by the file name without extension:
- `.json`, the evaluation-dataset file llm-jp-eval's preprocessing writes (`instruction`, `output_length`,
  `metrics`, `few_shots`, `samples` of `{input, output}`): generation items in llm-jp-eval's prompt (its default
  system sentence, `### 指示:`, `shots` few-shot examples as `### 入力:` / `### 応答:` pairs, then the sample's
  input); only the metrics exact_match and char_f1 are scored, others are refused by name. The few-shot examples
  are read as llm-jp-eval 1.x reads them (`get_few_shot_samples`): the first `shots` samples of the sibling
  `../train/NAME.json` (its layout: `evaluation/test/NAME.json` holds `few_shots: []`, the examples are in
  `evaluation/train/NAME.json`); a file without that sibling gives its own `few_shots`. Fewer examples than
  asked is a one-line warning and a prompt with the examples there are (llm-jp-eval stops on an assertion);
- `.jsonl` in JCommonsenseQA's shape (`question`, `choices`, `label`): multiple-choice items. The context is the
  question as it is and each continuation the choice as it is (no separator: Japanese has no spaces), or, with a
  `template`, `template.format(question=..., choices=...)`; `shots` examples (the file's first lines, then left
  out of the scored items) go before it, each as its context followed by its gold choice and a blank line.
Every file is read under one UTF-8 policy (`workbench.analysis.readers.read_text`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from workbench.analysis import readers
from workbench.analysis.readers import json_cell
from workbench.errors import MissingData, UsageError

BUILTIN = ("facts-en", "facts-ja", "facts-en2ja", "facts-ja2en")
METRICS = ("exact_match", "char_f1")
LLMJP_SYSTEM = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"


@dataclass(frozen=True)
class Choice:
    context: str
    choices: tuple[str, ...]
    gold: int
    fact: str = ""  # the planted fact it asks, for exposure


@dataclass(frozen=True)
class Generation:
    prompt: str
    answer: str
    output_length: int  # tokens to generate (-1: as many as the answer has)
    fact: str = ""


@dataclass(frozen=True)
class Task:
    name: str
    choices: tuple[Choice, ...] = ()
    generations: tuple[Generation, ...] = ()
    fingerprint: str = ""  # of a task file's bytes


# ---------------------------------------------------------------------------------------------- built in

def builtin(run, name: str) -> Task:
    """One of `BUILTIN`, from the run's planted facts."""
    facts = run.table("data/facts")
    if facts is None or facts.empty:
        raise MissingData(f"{name} asks the facts planted in the training corpus, which {run.location} does not "
                          "store (an imported run?); give a task file (.json from llm-jp-eval, .jsonl of questions)")
    facts = [{k: json_cell(v) for k, v in row.items()} for row in facts.sort_values("id").to_dict("records")]
    taught, asked = {"facts-en": ("en", "en"), "facts-ja": ("ja", "ja"), "facts-en2ja": ("en", "ja"),
                     "facts-ja2en": ("ja", "en")}[name]
    one_language = name.endswith(("2ja", "2en"))
    chosen = [f for f in facts if f["copies"][taught] > 0 and (not one_language or f["copies"][asked] == 0)]
    choices, generations = [], []
    for f in chosen:
        same = [g for g in facts if g["relation"] == f["relation"]]
        choices.append(Choice(f["prompt"][asked], tuple(g["answer"][asked] for g in same), same.index(f), f["id"]))
        generations.append(Generation(f["prompt"][asked], f["object"][asked], -1, f["id"]))
    return Task(name, tuple(choices), tuple(generations))



# ---------------------------------------------------------------------------------------------- files

def read_file(path: str | Path, shots: int, template: str | None) -> Task:
    """A task file (see the module docstring); a bad one is a one-line `UsageError` naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"evaluation task file {p} not found (give an llm-jp-eval .json, a .jsonl of questions, "
                         f"or one of {', '.join(BUILTIN)})")
    raw = p.read_bytes()
    text = readers.read_text(p, raw)
    if p.suffix == ".json":
        doc = _document(p, text)
        train = _train_file(p) if shots else None
        train_raw = train.read_bytes() if train is not None else b""  # the prompt depends on it: fingerprinted
        generations = _llmjp(p, doc, _few_shots(p, doc, train, train_raw, shots))
        return Task(p.stem, generations=generations, fingerprint=_fingerprint(raw + train_raw, shots, template))
    if p.suffix == ".jsonl":
        choices = _questions(p, text, shots, template)
        return Task(p.stem, choices=choices, fingerprint=_fingerprint(raw, shots, template))
    raise UsageError(f"evaluation task file {p}: give an llm-jp-eval .json or a .jsonl of questions")


def _fingerprint(raw: bytes, shots: int, template: str | None) -> str:
    return hashlib.sha256(raw + f"{shots}|{template}".encode()).hexdigest()[:16]


def _train_file(p: Path) -> Path | None:
    """llm-jp-eval's few-shot file of an evaluation file `…/test/NAME.json`: `…/train/NAME.json`, if it exists."""
    train = p.resolve().parent.parent / "train" / p.name
    return train if train.is_file() else None


def _document(p: Path, text: str) -> dict:
    """An llm-jp-eval evaluation-dataset JSON (`instruction`, `samples` of `{input, output}`)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("samples"), list):
        raise UsageError(f"{p}: expected llm-jp-eval's evaluation-dataset JSON with 'instruction' and 'samples'")
    return doc


def _examples(p: Path, items, what: str) -> list[tuple[str, str]]:
    """(input, output) of each llm-jp-eval sample in `items`; a `UsageError` naming the first bad one."""
    if not isinstance(items, list):
        raise UsageError(f"{p}: expected a list of {what}s, each with a string 'input' and 'output'")
    for n, s in enumerate(items):
        if not isinstance(s, dict) or not isinstance(s.get("input"), str) or not isinstance(s.get("output"), str):
            raise UsageError(f"{p}: {what} {n} needs a string 'input' and 'output'")
    return [(s["input"], s["output"]) for s in items]


def _few_shots(p: Path, doc: dict, train: Path | None, train_raw: bytes, shots: int) -> list[tuple[str, str]]:
    """The first `shots` examples: of the train file when there is one, else the file's `few_shots`; a warning
    when fewer exist."""
    source = train or p
    items = _document(train, readers.read_text(train, train_raw))["samples"] if train else doc.get("few_shots", [])
    examples = _examples(source, items, "sample" if train else "few-shot example")
    if len(examples) < shots:
        logging.getLogger(__name__).warning("%s holds %d few-shot example(s), fewer than the %d asked: the prompt "
                                            "has %d", source, len(examples), shots, len(examples))
    return examples[:shots]


def _llmjp(p: Path, doc: dict, few: list[tuple[str, str]]) -> tuple[Generation, ...]:
    for metric in doc.get("metrics", []):
        if metric not in METRICS:
            raise UsageError(f"{p}: metric {metric!r} is not supported; supported: {', '.join(METRICS)}")
    samples = _examples(p, doc["samples"], "sample")
    if not samples:
        raise UsageError(f"{p} holds no samples")
    head = f"{LLMJP_SYSTEM}\n\n### 指示:\n{doc.get('instruction', '')}"
    head += "".join(f"\n\n### 入力:\n{i}\n\n### 応答:\n{o}" for i, o in few)
    length = int(doc.get("output_length", 32))
    return tuple(Generation(f"{head}\n\n### 入力:\n{i}\n\n### 応答:\n", o, length) for i, o in samples)


def _questions(p: Path, text: str, shots: int, template: str | None) -> tuple[Choice, ...]:
    items = []
    for where, rec in readers.records(p, text):
        choices = rec.get("choices")
        if not isinstance(rec.get("question"), str) or not isinstance(choices, list) \
                or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise UsageError(f"{where}: expected 'question' (text), 'choices' (two or more texts) and 'label'")
        label = rec.get("label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise UsageError(f"{where}: label {label!r} is not the index of one of the {len(choices)} choices")
        try:
            context = template.format(question=rec["question"], choices=choices) if template else rec["question"]
        except (KeyError, IndexError) as e:
            raise UsageError(f"template {template!r} names {e}; it may use {{question}} and {{choices}}") from None
        items.append(Choice(context, tuple(choices), label))
    if len(items) <= shots:
        raise UsageError(f"{p} holds {len(items)} question(s): fewer than {shots} shots plus one to score")
    prefix = "".join(f"{i.context}{i.choices[i.gold]}\n\n" for i in items[:shots])
    return tuple(Choice(prefix + i.context, i.choices, i.gold) for i in items[shots:])
