"""`evaluation`: task scores at every checkpoint — the run's planted facts in each language and across languages,
llm-jp-eval and multiple-choice task files, and lm-evaluation-harness tasks through an optional bridge.

Per checkpoint, one model serves every task (`evaluation.tasks`):
- multiple choice: each choice's summed log-likelihood after the context, the context encoded once into a KV cache
  and shared by its choices (`workbench.models.capture.continuation_logprobs`); the continuation's tokens are
  those of `context + choice` beyond the tokens of `context`, trailing spaces of the context moved to the choice
  (lm-evaluation-harness' `_encode_pair`: `harness.encode_pair`), and a context that does not fit the model's
  window with its longest choice is an error naming task and item, never cut. `accuracy` (the largest sum),
  `accuracy_chars` and `accuracy_bytes` (the sum divided by the choice's characters, or its UTF-8 bytes: for
  Japanese these differ about threefold), `gold_logprob` (mean log-likelihood of the gold choice, nats) and
  `bits_per_byte` of the gold choices (Σ −log₂ p / Σ bytes), `chance` (mean of 1 / choices);
- generation: greedy, `output_length` tokens (as many as the answer has for the facts), scored as llm-jp-eval
  does (`evaluation.metrics`): `exact_match`, `char_f1`;
- every score with `n_*` items and a standard error (`*_stderr`).
Per planted fact (dims `task, fact`): `fact_correct` (the cloze answered right), `fact_gold_logprob`, and how often
and how recently it had been seen by the step (`fact_times_seen`: training batches holding any copy of its
statement, from the data order; `fact_steps_since_seen`), so recall can be read against exposure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.readers import json_cell
from workbench.analyses.evaluation import harness, metrics
from workbench.analyses.evaluation.tasks import BUILTIN, Choice, Generation, Task, builtin, read_file
from workbench.analysis.registry import register
from workbench.errors import MissingData, UsageError


@register
class Evaluation(Analysis):
    name = "evaluation"
    kind = "forward"
    reads_eval_set = False  # its items are the tasks'
    reads_tables = ("data/facts", "data/documents")  # built-in tasks, and where each fact is planted
    reads_tables_upto = ("data/order",)  # each fact's exposures up to the step
    dims = ("task", "fact")
    description = "task scores: planted facts per language and across languages, task files (see evaluation/__init__.py)"
    title, page, page_order = "Evaluation", "apps.dashboard.views.evaluation", 70
    summary_vars = ("accuracy", "accuracy_bytes", "exact_match", "char_f1")

    @dataclass(frozen=True)
    class Params:
        tasks: tuple[str, ...] = ()  # built-in names or task files; () = every built-in the run supports
        shots: int = 4  # few-shot examples of task files
        template: str | None = None  # multiple-choice files: a context template with {question} and {choices}
        harness_tasks: tuple[str, ...] = ()  # lm-evaluation-harness tasks (the `harness` extra), scored as well
        harness_include: str | None = None  # a folder of the harness task YAMLs

    def __init__(self, **params):
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        super().__init__(**params)
        p = self.params
        if p.shots < 0:
            raise UsageError(f"evaluation: shots must be >= 0, got {p.shots}")
        self.files: dict[str, Task] = {}
        for name in p.tasks:
            if name not in BUILTIN:
                if not name.endswith((".json", ".jsonl")) and not Path(name).exists():
                    raise UsageError(f"unknown evaluation task {name!r}; built-in tasks: {', '.join(BUILTIN)}, or a "
                                     "task file (.json from llm-jp-eval, .jsonl of questions)")
                task = read_file(name, p.shots, p.template)  # read here, in the driver
                self.files[task.name] = task
        if p.harness_tasks:
            harness.check(p.harness_include)

    def inputs(self, eval_set) -> dict[str, str]:
        """Each task file's content fingerprint: the steps scored on a file that changed since are stale."""
        return {f"file:{n}": t.fingerprint for n, t in sorted(self.files.items())}

    def task_names(self, run) -> list[str]:
        if self.params.tasks:
            return [n if n in BUILTIN else Path(n).stem for n in self.params.tasks]
        facts = run.table("data/facts")
        if facts is None:
            return []
        copies = [json_cell(c) for c in facts["copies"]]
        has = {"en": any(c["en"] for c in copies), "ja": any(c["ja"] for c in copies),
               "en2ja": any(c["en"] and not c["ja"] for c in copies), "ja2en": any(c["ja"] and not c["en"] for c in copies)}
        return [f"facts-{k}" for k in ("en", "ja", "en2ja", "ja2en") if has[k]]

    def check(self, run, eval_set) -> None:
        names = self.task_names(run)
        if not names and not self.params.harness_tasks:
            raise MissingData(f"evaluation: {run.location} stores no planted facts to ask (an imported run?); give "
                              "task files: --tasks path/to/task.json")
        for name in names:
            if name in BUILTIN:
                builtin(run, name)  # MissingData naming the task when the run has no facts
        scorer = Scorer(None, run)  # here, in the driver: an item too long for the window is a usage error
        for task in self.files.values():
            for n, item in enumerate(task.choices, 1):
                scorer.pair(item, f"evaluation task {task.name}, item {n}")

    def compute(self, ctx: StepContext) -> xr.Dataset:
        names = self.task_names(ctx.run)
        tasks = ctx.cached(("evaluation.tasks", tuple(names), tuple(sorted(self.inputs(None).items()))),
                           lambda: [self.files[n] if n in self.files else builtin(ctx.run, n) for n in names])
        scorer = Scorer(ctx.model(streamable=True), ctx.run)
        scorer.prepare(tasks)
        rows = {t.name: scorer.task(t) for t in tasks}
        if self.params.harness_tasks:
            rows.update(harness.evaluate(ctx.run.checkpoint(ctx.step), self.params.harness_tasks,
                                         self.params.harness_include))
        facts = sorted({i.fact for t in tasks for i in t.choices if i.fact})
        seen = ctx.cached("evaluation.fact_exposures", lambda: fact_exposures(ctx.run, facts)) if facts else {}
        return dataset(rows, tasks, facts, seen, ctx.step)



class Scorer:
    """Scores tasks with one model: multiple-choice log-likelihoods and greedy generations."""

    def __init__(self, model, run):
        from workbench.models.views import hf_tokenizer

        self.model, self.tok = model, run.tokenizer
        self.eos = hf_tokenizer(run).eos_token_id
        config = run.model_config
        self.context = config.get("max_position_embeddings") or config.get("n_positions") or 2048
        self.prepared: dict[tuple, np.ndarray] = {}  # scores computed up front for a streamed model

    def prepare(self, tasks: list[Task]) -> None:
        """With a streamed model, score every item of `tasks` up front: the log-probabilities of every choice in
        one pass over the blocks (each context + choice a sequence of its own), the greedy generations in one
        pass per generated token for all items at once. A whole model scores item by item."""
        import torch

        from workbench.analysis import forward

        if not forward.is_streamed(self.model):
            return
        seqs = list(dict.fromkeys((tuple(c), tuple(k)) for t in tasks for n, item in enumerate(t.choices, 1)
                                  for c, conts in [self.pair(item, f"evaluation task {t.name}, item {n}")]
                                  for k in conts))
        finals = self.model.run([torch.tensor([c + k]) for c, k in seqs])
        for (c, k), x in zip(seqs, finals):
            logp = self.model.unembed(x[0, len(c) - 1: len(c) + len(k) - 1]).double().log_softmax(-1)
            self.prepared[("choice", c, k)] = logp.gather(-1, torch.tensor(k)[:, None])[:, 0].numpy()
        prompts = list(dict.fromkeys(self.prompt(item) for t in tasks for item in t.generations))
        outs = self.model.generate([torch.tensor([ids]) for ids, _ in prompts], max((n for _, n in prompts), default=0))
        for (ids, n), out in zip(prompts, outs):
            self.prepared[("generation", ids, n)] = out[0, len(ids): len(ids) + n].numpy()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def pair(self, item: Choice, where: str) -> tuple[list[int], list[list[int]]]:
        """The context's token ids and each choice's, split as lm-evaluation-harness splits them (an empty one
        is the end-of-text token); a `UsageError` naming `where` unless they fit the model's window."""
        pad = self.eos if self.eos is not None else 0
        pairs = [harness.encode_pair(self.encode, item.context, c) for c in item.choices]
        ctx_ids, conts = pairs[0][0] or [pad], [cont or [pad] for _, cont in pairs]
        harness.fit_window(ctx_ids, conts, self.context, where)
        return ctx_ids, conts

    def choice(self, item: Choice, where: str = "a multiple-choice item") -> dict:
        from workbench.models.capture import continuation_logprobs

        ctx_ids, conts = self.pair(item, where)
        logprobs = [self.prepared[("choice", tuple(ctx_ids), tuple(k))] for k in conts] if self.prepared else \
            continuation_logprobs(self.model, ctx_ids, conts)
        sums = np.array([lp.sum() for lp in logprobs])
        chars = np.array([max(1, len(c)) for c in item.choices])
        nbytes = np.array([max(1, len(c.encode("utf-8"))) for c in item.choices])
        return {"correct": float(np.argmax(sums) == item.gold), "correct_chars": float(np.argmax(sums / chars) == item.gold),
                "correct_bytes": float(np.argmax(sums / nbytes) == item.gold), "gold_logprob": float(sums[item.gold]),
                "gold_bytes": float(nbytes[item.gold]), "chance": 1 / len(item.choices), "choice": int(np.argmax(sums))}

    def prompt(self, item: Generation) -> tuple[tuple[int, ...], int]:
        """The prompt's token ids (its last ones, so that the answer fits the window) and the tokens to generate."""
        n = item.output_length if item.output_length > 0 else max(1, len(self.encode(item.answer)))
        return tuple(self.encode(item.prompt)[-max(1, self.context - n):] or [self.eos or 0]), n

    def generation(self, item: Generation) -> dict:
        import torch

        from workbench.models.capture import generate

        ids, n = self.prompt(item)
        if self.prepared:
            new = self.prepared[("generation", ids, n)].tolist()
        else:
            new = generate(self.model, torch.tensor([ids], device=next(self.model.parameters()).device), n)[0, len(ids):]
            new = new.tolist()
        pred = metrics.prediction(self.tok.decode(new))
        return {"exact_match": metrics.exact_match(pred, item.answer), "char_f1": metrics.char_f1(pred, item.answer),
                "prediction": pred}

    def task(self, task: Task) -> dict:
        """Every score of `task` (means, standard errors, counts) and its per-fact rows."""
        out: dict = {}
        scored = [(item, self.choice(item, f"evaluation task {task.name}, item {n}"))
                  for n, item in enumerate(task.choices, 1)]
        if scored:
            for key, var in (("correct", "accuracy"), ("correct_chars", "accuracy_chars"),
                             ("correct_bytes", "accuracy_bytes"), ("gold_logprob", "gold_logprob")):
                out[var], out[f"{var}_stderr"] = metrics.mean_and_stderr([s[key] for _, s in scored])
            bits = np.array([-s["gold_logprob"] / math.log(2) for _, s in scored])
            nbytes = np.array([s["gold_bytes"] for _, s in scored])
            out["bits_per_byte"] = float(bits.sum() / nbytes.sum())
            out["bits_per_byte_stderr"] = metrics.mean_and_stderr(bits / nbytes)[1]
            out["chance"] = float(np.mean([s["chance"] for _, s in scored]))
            out["n_choice"] = len(scored)
        generated = [self.generation(i) for i in task.generations]
        if generated:
            for var in ("exact_match", "char_f1"):
                out[var], out[f"{var}_stderr"] = metrics.mean_and_stderr([g[var] for g in generated])
            out["n_generation"] = len(generated)
        out["facts"] = {i.fact: (s["correct"], s["gold_logprob"]) for i, s in scored if i.fact}
        return out


def fact_exposures(run, facts: list[str]) -> dict[str, np.ndarray]:
    """Per fact, the sorted steps whose batches held a piece of any document span where its statement is written."""
    import json

    from workbench.analyses.memorization import Sequence, exposures

    try:
        docs = run.documents()
    except MissingData:
        return {}
    spans: dict[str, list] = {f: [] for f in facts}
    for row in docs.to_dict("records"):
        marks = [s for s in json.loads(row["annotations"]) if str(s[2]).startswith("fact:") and s[2][5:] in spans]
        if not marks:
            continue
        offsets = run.tokenizer.encode(row["text"], add_special_tokens=False).offsets
        for start, end, label in marks:
            tokens = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
            if tokens:
                spans[label[5:]].append((int(row["document_id"]), tokens[0], tokens[-1] + 1))
    seqs = [Sequence("fact", 0, "", len(s), (), (), tuple(s)) for s in spans.values()]
    return dict(zip(facts, exposures(run, seqs)))


VARIABLES = {  # name: (description, units)
    "accuracy": ("multiple choice: share of items whose gold choice has the largest summed log-likelihood", "1"),
    "accuracy_chars": ("multiple choice, log-likelihood per character of the choice", "1"),
    "accuracy_bytes": ("multiple choice, log-likelihood per UTF-8 byte of the choice", "1"),
    "gold_logprob": ("mean summed log-likelihood of the gold choice", "nats"),
    "bits_per_byte": ("Σ −log2 p(gold choice) / Σ its UTF-8 bytes", "bits/byte"),
    "chance": ("accuracy of a uniform guess (mean of 1 / choices)", "1"),
    "exact_match": ("generation: share of predictions equal to the answer (llm-jp-eval)", "1"),
    "char_f1": ("generation: mean token_sort_ratio / 100 of prediction and answer (llm-jp-eval)", "1"),
}


def dataset(rows: dict[str, dict], tasks: list[Task], facts: list[str], seen: dict, step: int) -> xr.Dataset:
    names = list(rows)
    data = {}
    for var, (what, units) in VARIABLES.items():
        data[var] = ("task", np.array([rows[n].get(var, np.nan) for n in names], dtype=float),
                     {"description": what, "units": units})
        if var != "chance":
            data[f"{var}_stderr"] = ("task", np.array([rows[n].get(f"{var}_stderr", np.nan) for n in names], dtype=float),
                                     {"description": f"standard error of {var}", "units": units})
    for count in ("n_choice", "n_generation"):
        data[count] = ("task", np.array([rows[n].get(count, 0) for n in names], dtype=np.int64),
                       {"description": f"items scored ({count[2:]})", "units": "items"})
    correct = np.full((len(names), len(facts)), np.nan)
    gold = np.full((len(names), len(facts)), np.nan)
    for i, n in enumerate(names):
        for f, (c, g) in rows[n].get("facts", {}).items():
            correct[i, facts.index(f)], gold[i, facts.index(f)] = c, g
    steps = [seen.get(f, np.array([], dtype=np.int64)) for f in facts]
    times = np.array([np.searchsorted(s, step, side="right") for s in steps], dtype=np.int64)
    since = np.array([step - s[t - 1] if t else np.nan for s, t in zip(steps, times)], dtype=float)
    data["fact_correct"] = (("task", "fact"), correct, {"description": "1 when the fact's cloze was answered right "
                                                                       "(NaN: the task does not ask it)", "units": "1"})
    data["fact_gold_logprob"] = (("task", "fact"), gold, {"description": "log-likelihood of the fact's object", "units": "nats"})
    data["fact_times_seen"] = ("fact", times, {"description": "training batches up to this step holding its statement"})
    data["fact_steps_since_seen"] = ("fact", since, {"description": "steps since its statement was last seen (NaN: never)",
                                                     "units": "steps"})
    return xr.Dataset(data, coords={"task": np.array(names, dtype=object), "fact": np.array(facts, dtype=object)})
