"""Probing tasks: labelled positions of texts, with a group per text for splitting and a control task.

A `Source` is a set of texts that run through the model once per checkpoint, the positions of them that are
examples, and the tasks that label those examples (tasks of one source share its examples, so they share one
Gram matrix). Built in, from the ground truth the synthetic corpus plants (`data/documents`, `data/facts`):

- `script` and `language` (source `tokens`: every token of a seeded sample of documents): the script class of
  the token's first non-space character (Latin, hiragana, katakana, kanji, digits, punctuation, space, ...),
  and the document's language (en / ja / code);
- `fact_en`, `fact_ja` (sources of their own): at the last token of a fact's subject where the fact is written
  in a document, which fact (equivalently which object) it is; `fact_en` is also scored on `fact_ja`'s test
  examples and the reverse (cross-lingual transfer: the two share their classes).

From JSONL files (any run), named by the file name without extension: `{"text": ..., "label": ...}` per line
(sequence level: probed at the last token, or the mean over the text's tokens) or `{"text": ..., "spans":
[[start, end, label], ...]}` (token level: every token overlapping a character span gets its label).

Splits are by group — the document (for facts too: a fact written in two documents is two examples, and a
document is never on both sides), the line for files — into train / validation / test, the same at every
checkpoint for a given seed. The control task (Hewitt & Liang 2019) gives every token type (the token id at the
probed position) a label drawn at random from the task's own label distribution.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.documents import script_of
from workbench.analysis import readers
from workbench.analysis.readers import json_cell
from workbench.errors import MissingData, UsageError

BUILTIN = ("script", "language", "fact")  # "fact" stands for fact_en and fact_ja
SPLITS = ("train", "val", "test")
FRACTIONS = (0.6, 0.2, 0.2)


@dataclass
class Task:
    name: str
    classes: list[str]
    labels: np.ndarray  # [example] class index
    control: np.ndarray  # [example] control-task class index
    transfer: str | None = None  # a task of another source, with the same classes, this probe is also scored on


@dataclass
class Source:
    """Texts, the examples among their tokens and the tasks labelling them."""

    name: str
    texts: list[list[int]]  # token ids
    groups: np.ndarray  # [text] what the split keeps together
    example_text: np.ndarray  # [example]
    example_start: np.ndarray  # [example] first token (within the text) the example's feature averages
    example_end: np.ndarray  # [example] one past its last token
    tasks: dict[str, Task] = field(default_factory=dict)
    split: np.ndarray | None = None  # [example] 0 train, 1 val, 2 test

    @property
    def n_examples(self) -> int:
        return len(self.example_text)

    def token_type(self) -> np.ndarray:
        """The token id at each example's (last) position."""
        return np.array([self.texts[t][e - 1] for t, e in zip(self.example_text, self.example_end)], dtype=np.int64)


@dataclass(frozen=True)
class FileTask:
    """A task read from a JSONL file (in the driver; shipped to the workers with the analysis)."""

    name: str
    records: tuple  # (text, label) or (text, ((start, end, label), ...)) per line
    level: str  # "sequence" or "token"
    fingerprint: str


def read_file(path: str | Path) -> FileTask:
    """Parse a JSONL task file; a bad line is a one-line `UsageError` naming the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"probe task file {p} not found (give a .jsonl file, or one of {', '.join(BUILTIN)})")
    raw = p.read_bytes()
    records, levels = [], set()
    for where, rec in readers.records(p, readers.read_text(p, raw)):
        if not isinstance(rec.get("text"), str):
            raise UsageError(f"{where}: expected a JSON object with a string 'text'")
        if "spans" in rec:
            spans = rec["spans"]
            if not isinstance(spans, list) or not all(isinstance(s, list) and len(s) == 3 for s in spans):
                raise UsageError(f"{where}: 'spans' must be a list of [start, end, label]")
            for start, end, _ in spans:
                if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(rec["text"])):
                    raise UsageError(f"{where}: span [{start}, {end}] is outside the text (0..{len(rec['text'])})")
            records.append((rec["text"], tuple((s, e, str(label)) for s, e, label in spans)))
            levels.add("token")
        elif "label" in rec and isinstance(rec["label"], (str, int, bool)):
            records.append((rec["text"], str(rec["label"])))
            levels.add("sequence")
        else:
            raise UsageError(f"{where}: expected a 'label' (sequence level) or 'spans' (token level)")
    if not records:
        raise UsageError(f"{p} holds no examples")
    if len(levels) > 1:
        raise UsageError(f"{p} mixes 'label' lines and 'spans' lines; give one kind per file")
    labels = {lab for _, lab in records} if "sequence" in levels else {s[2] for _, spans in records for s in spans}
    if len(labels) < 2:
        raise UsageError(f"{p}: the task has one class ({next(iter(labels), 'none')!r}); a probe needs two or more")
    return FileTask(p.stem, tuple(records), levels.pop(), hashlib.sha256(raw).hexdigest()[:16])


# ---------------------------------------------------------------------------------------------- building

def build(run, names: list[str], files: dict[str, FileTask], max_tokens: int, pool: str, seed: int,
          seq_len: int) -> list[Source]:
    """The sources of the tasks `names` (built-in names or file task names), split and with control tasks;
    sequence-level file texts are cut to `seq_len` tokens (one row each)."""
    tok = run.tokenizer
    sources = []
    wanted = set(names)
    if wanted & {"script", "language"}:
        sources.append(_token_source(run, tok, wanted & {"script", "language"}, max_tokens, seed))
    if wanted & {"fact_en", "fact_ja"}:
        sources += [s for s in _fact_sources(run, tok) if s.name in wanted]
    for name in names:
        if name in files:
            sources.append(_file_source(files[name], tok, pool, seq_len))
    for source in sources:
        source.split = _split(source.groups[source.example_text], seed)
        for task in source.tasks.values():
            task.control = _control(source.token_type(), task.labels, len(task.classes), seed, task.name)
    return sources


def _corpus(run):
    try:
        return run.documents()
    except MissingData:
        raise MissingData(f"the built-in probe tasks read the training corpus, which {run.location} does not store "
                          "(an imported run?); give a task file instead: --tasks path/to/task.jsonl") from None


def _token_source(run, tok, tasks: set[str], max_tokens: int, seed: int) -> Source:
    docs = _corpus(run).sort_values("document_id")
    order = np.random.default_rng(seed).permutation(len(docs))
    texts, groups, ex_text, ex_pos, scripts, langs = [], [], [], [], [], []
    languages = sorted(set(docs["language"]))
    total = 0
    for i in order:
        if total >= max_tokens:
            break
        row = docs.iloc[i]
        enc = tok.encode(row["text"], add_special_tokens=False)
        ids = enc.ids
        if not ids:
            continue
        t = len(texts)
        texts.append(list(ids))
        groups.append(int(row["document_id"]))
        for j, (a, b) in enumerate(enc.offsets):
            ex_text.append(t)
            ex_pos.append(j)
            scripts.append(_script_of_piece(row["text"][a:b]))
            langs.append(languages.index(row["language"]))
        total += len(ids)
    pos = np.array(ex_pos)
    source = Source("tokens", texts, np.array(groups), np.array(ex_text), pos, pos + 1)
    if "script" in tasks:
        classes = sorted(set(scripts))
        source.tasks["script"] = Task("script", classes, np.array([classes.index(s) for s in scripts]), None)
    if "language" in tasks:
        source.tasks["language"] = Task("language", languages, np.array(langs), None)
    return source


def _script_of_piece(text: str) -> str:
    stripped = text.strip()
    return script_of(stripped[0]) if stripped else "space"


def _fact_sources(run, tok) -> list[Source]:
    facts = run.table("data/facts")
    if facts is None or facts.empty:
        raise MissingData(f"{run.location} stores no planted facts, which the fact tasks probe; give a task file")
    facts = facts.sort_values("id")
    classes = [str(f) for f in facts["id"]]
    subjects = {str(r["id"]): json_cell(r["subject"]) for r in facts.to_dict("records")}
    docs = _corpus(run).set_index("document_id")
    sources = []
    for lang in ("en", "ja"):
        texts, groups, ex_text, ex_pos, labels = [], [], [], [], []
        for doc_id, row in docs[docs["language"] == lang].iterrows():
            spans = [s for s in json.loads(row["annotations"]) if str(s[2]).startswith("fact:")]
            if not spans:
                continue
            enc = tok.encode(row["text"], add_special_tokens=False)
            t = None
            for start, end, label in spans:
                fid = label.split(":", 1)[1]
                statement = row["text"][start:end]
                at = statement.find(subjects[fid][lang])
                if at < 0:
                    continue
                last_char = start + at + len(subjects[fid][lang]) - 1
                j = next((k for k, (a, b) in enumerate(enc.offsets) if a <= last_char < b), None)
                if j is None:
                    continue
                if t is None:
                    t = len(texts)
                    texts.append(list(enc.ids))
                    groups.append(int(doc_id))
                ex_text.append(t)
                ex_pos.append(j)
                labels.append(classes.index(fid))
        name = f"fact_{lang}"
        pos = np.array(ex_pos, dtype=np.int64)
        source = Source(name, texts, np.array(groups), np.array(ex_text, dtype=np.int64), pos, pos + 1)
        source.tasks[name] = Task(name, classes, np.array(labels, dtype=np.int64), None,
                                  transfer="fact_ja" if lang == "en" else "fact_en")
        sources.append(source)
    return sources


def _file_source(task: FileTask, tok, pool: str, seq_len: int) -> Source:
    texts, ex_text, starts, ends, labels = [], [], [], [], []
    if task.level == "sequence":
        classes = sorted({label for _, label in task.records})
        for text, label in task.records:
            ids = tok.encode(text, add_special_tokens=False).ids[:seq_len]
            if not ids:
                continue
            ex_text.append(len(texts))
            starts.append(0 if pool == "mean" else len(ids) - 1)
            ends.append(len(ids))
            labels.append(classes.index(label))
            texts.append(list(ids))
    else:
        classes = sorted({s[2] for _, spans in task.records for s in spans})
        for text, spans in task.records:
            enc = tok.encode(text, add_special_tokens=False)
            t = len(texts)
            used = False
            for j, (a, b) in enumerate(enc.offsets[:seq_len]):
                hit = next((lab for s, e, lab in spans if a < e and b > s), None)
                if hit is not None:
                    ex_text.append(t)
                    starts.append(j)
                    ends.append(j + 1)
                    labels.append(classes.index(hit))
                    used = True
            if used:
                texts.append(list(enc.ids[:seq_len]))
    groups = np.arange(len(texts))  # a line is a group
    source = Source(task.name, texts, groups, np.array(ex_text, dtype=np.int64), np.array(starts, dtype=np.int64),
                    np.array(ends, dtype=np.int64))
    source.tasks[task.name] = Task(task.name, classes, np.array(labels, dtype=np.int64), None)
    return source


def _split(groups: np.ndarray, seed: int) -> np.ndarray:
    """Each example's split (0 train, 1 val, 2 test), by its group: the groups in a seeded order, cut 60/20/20."""
    unique = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(unique))
    cuts = np.round(np.cumsum(FRACTIONS)[:-1] * len(unique)).astype(int)
    of_group = np.empty(len(unique), dtype=np.int64)
    for s, part in enumerate(np.split(order, cuts)):
        of_group[part] = s
    return of_group[np.searchsorted(unique, groups)]


def _control(token_type: np.ndarray, labels: np.ndarray, n_classes: int, seed: int, name: str) -> np.ndarray:
    """Hewitt & Liang's control task: each token type gets a class drawn from the task's label distribution."""
    rng = np.random.default_rng([seed, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])
    prior = np.bincount(labels, minlength=n_classes) / max(1, len(labels))
    types = np.unique(token_type)
    drawn = rng.choice(n_classes, size=len(types), p=prior)
    return drawn[np.searchsorted(types, token_type)]
