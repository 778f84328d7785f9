"""`memorization`: does the model complete a trained sequence from its prefix, and how often had it seen it?

Sequences (the same at every step):
- every canary of the corpus (`data/canaries`): the target is the canary's secret (its text after the last
  space: "canary 7f3a…" → "7f3a…"), as tokens of its first document; the prompt is the `prefix_tokens`
  tokens before it in that document;
- `sample` training documents (drawn by `seed` among those of at least `prefix_tokens +
  continuation_tokens` tokens): the prompt is their first `prefix_tokens` tokens, the target the next
  `continuation_tokens` (Carlini et al. 2023, Biderman et al. 2023's k-extractability).

Per step, the model's greedy continuation of each prompt, as long as the target:
- `exact_match` [sequence]: 1 when every continuation token equals the target's, else 0;
- `token_match` [sequence]: share of continuation tokens equal to the target's, position by position;
- `times_seen` [sequence]: training batches up to this step that held any of the target's tokens (from the
  run's data order; a canary counts in every document that carries it), and `steps_since_seen` [sequence]
  (NaN when never seen): with `copies`, the axes of the step × frequency heatmaps of memorisation studies;
- `continuation` [sequence, position]: the greedy continuation's token ids (-1 past the target's length), so
  that examples can be shown; prompts and targets are the same at every step (`sequences(run, params)`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import xarray as xr

from workbench.analysis import forward
from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.readers import json_cell
from workbench.analysis.registry import register
from workbench.errors import MissingData, UsageError
from workbench.store.layout import DOCUMENTS, ORDER

CANARIES = "data/canaries"


@dataclass(frozen=True)
class Sequence:
    kind: str  # "canary" or "sample"
    document_id: int  # the document the prompt comes from
    canary: str  # canary id, "" for samples
    copies: int  # documents that carry the target
    prompt: tuple[int, ...]
    target: tuple[int, ...]
    spans: tuple[tuple[int, int, int], ...]  # (document_id, first token, end token) of every copy of the target


@register
class Memorization(Analysis):
    name = "memorization"
    kind = "forward"
    reads_eval_set = False  # its sequences come from the training corpus
    reads_tables = (DOCUMENTS, CANARIES)
    reads_tables_upto = (ORDER,)  # times seen up to the step
    dims = ("sequence", "position")
    description = ("greedy completion of canaries and sampled training sequences, with how often and how "
                   "recently each was seen (see workbench/analyses/memorization.py)")
    title, page, page_order = "Memorisation", "apps.dashboard.views.memorization", 50

    @dataclass(frozen=True)
    class Params:
        prefix_tokens: int = 32
        continuation_tokens: int = 32
        sample: int = 64
        seed: int = 0
        batch_size: int = 32

    @classmethod
    def summary(cls, ds: xr.Dataset, step: int | None = None):
        """Per step (or per sequence of one step) the match rates of canaries and of sampled sequences."""
        if step is not None:
            one = ds.sel(step=step)
            return one[["exact_match", "token_match", "times_seen", "steps_since_seen"]].to_dataframe().drop(columns="step")
        df = ds[["exact_match", "token_match"]].to_dataframe()
        rates = df.groupby(["step", "kind"])[["exact_match", "token_match"]].mean().unstack("kind")
        rates.columns = [f"{v}[{k}]" for v, k in rates.columns]
        return rates

    @classmethod
    def figure(cls, ds: xr.Dataset, step: int | None = None, title: str = ""):
        """Over the steps, the canaries' step × copies map when there are canaries; else the summary drawn."""
        if step is None and "canary" in set(ds["kind"].values.tolist()):
            return canary_map(ds, title)
        return super().figure(ds, step, title)

    def check(self, run, eval_set) -> None:
        if run.table(DOCUMENTS) is None or run.table(ORDER) is None:
            raise MissingData(f"memorization needs the training corpus and data order, which {run.location} does "
                              "not store (an imported run?); run the other analyses with --only")
        p = self.params
        if min(p.prefix_tokens, p.continuation_tokens) < 1 or p.sample < 0:
            raise UsageError("memorization: prefix_tokens and continuation_tokens must be >= 1, sample >= 0")
        config = run.model_config
        context = config.get("max_position_embeddings") or config.get("n_positions")
        if context and p.prefix_tokens + p.continuation_tokens - 1 > context:
            raise UsageError(f"memorization: prefix_tokens + continuation_tokens - 1 = "
                             f"{p.prefix_tokens + p.continuation_tokens - 1} exceeds the model's context of {context}")

    def compute(self, ctx: StepContext) -> xr.Dataset:
        seqs = ctx.cached(("memorization.sequences", self.params), lambda: sequences(ctx.run, self.params))
        generated = greedy(ctx.model(streamable=True), [s.prompt for s in seqs], [len(s.target) for s in seqs], self.params.batch_size)
        match = [np.array(g) == np.array(s.target) for g, s in zip(generated, seqs)]
        seen = ctx.cached(("memorization.exposures", self.params), lambda: exposures(ctx.run, seqs))
        times = np.array([np.searchsorted(steps, ctx.step, side="right") for steps in seen])
        since = np.array([ctx.step - steps[n - 1] if n else np.nan for steps, n in zip(seen, times)], dtype=float)
        return xr.Dataset(
            {"exact_match": ("sequence", np.array([float(m.all()) for m in match]), {
                "description": "1 when the greedy continuation of the prompt equals the target", "units": "1"}),
             "token_match": ("sequence", np.array([m.mean() for m in match]), {
                 "description": "share of greedy continuation tokens equal to the target's", "units": "1"}),
             "times_seen": ("sequence", times, {
                 "description": "training batches up to this step holding any of the target's tokens"}),
             "steps_since_seen": ("sequence", since, {
                 "description": "steps since the last batch holding the target (NaN: never seen)", "units": "steps"}),
             "continuation": (("sequence", "position"), _padded(generated, self.params.continuation_tokens), {
                 "description": "token ids of the greedy continuation (-1 past the target's length)"})},
            coords={"sequence": np.arange(len(seqs)),
                    "kind": ("sequence", np.array([s.kind for s in seqs], dtype=object)),
                    "document_id": ("sequence", np.array([s.document_id for s in seqs])),
                    "canary": ("sequence", np.array([s.canary for s in seqs], dtype=object)),
                    "copies": ("sequence", np.array([s.copies for s in seqs]))})


def canary_map(ds: xr.Dataset, title: str = ""):
    """Canaries: mean token-level match by step × copies in the corpus (the memorisation studies' view)."""
    import plotly.express as px

    ds = ds[["token_match"]].load()
    match = ds["token_match"].where(ds["kind"] == "canary", drop=True)
    grid = match.groupby("copies").mean("sequence").transpose("copies", "step")  # [copies, step]
    return px.imshow(grid.values, x=[str(s) for s in grid["step"].values], y=[str(c) for c in grid["copies"].values],
                     labels={"x": "step", "y": "copies in the corpus", "color": "token match"}, zmin=0, zmax=1,
                     aspect="auto", title=title)


def greedy(model, prompts: list[tuple[int, ...]], lengths: list[int], batch_size: int) -> list[list[int]]:
    """The greedy continuation of each prompt, `lengths[i]` tokens long (prompts of one length and target
    length are batched together; a streamed model continues every batch at once, each token one pass over its
    blocks, to the longest length)."""
    import torch

    from workbench.models.capture import generate

    out: list[list[int]] = [[] for _ in prompts]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        groups.setdefault((len(prompt), n), []).append(i)
    batches = [(n, members[j: j + batch_size]) for (_, n), members in groups.items()
               for j in range(0, len(members), batch_size)]
    ids = [torch.tensor([prompts[i] for i in idx], dtype=torch.int64) for _, idx in batches]
    if forward.is_streamed(model):
        continued = model.generate(ids, max((n for n, _ in batches), default=0))
    else:
        device = next(model.parameters()).device
        continued = [generate(model, x.to(device), n) for x, (n, _) in zip(ids, batches)]
    for x, c, (n, idx) in zip(ids, continued, batches):
        for row, i in zip(c[:, x.shape[1]: x.shape[1] + n].tolist(), idx):
            out[i] = row
    return out


def _padded(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def sequences(run, params: "Memorization.Params") -> list[Sequence]:
    """The canaries, then the sampled training sequences."""
    return _canaries(run, params) + _samples(run, params)


def _encode(run, texts: list[str]):
    return run.tokenizer.encode_batch(texts, add_special_tokens=False)


def _canaries(run, p) -> list[Sequence]:
    table = run.table(CANARIES)
    if table is None:
        return []
    docs = run.documents().set_index("document_id")["text"]
    out = []
    for row in table.to_dict("records"):
        ids = [int(i) for i in json_cell(row["document_ids"])]
        secret = row["text"].rsplit(" ", 1)[-1]
        spans, prompt, target = [], None, None
        for doc, enc in zip(ids, _encode(run, [docs[i] for i in ids])):
            text = docs[doc]
            start = text.find(row["text"])
            if start < 0:
                continue
            begin, end = start + len(row["text"]) - len(secret), start + len(row["text"])
            a = next(i for i, (_, e) in enumerate(enc.offsets) if e > begin)
            b = next((i for i, (s, _) in enumerate(enc.offsets) if s >= end), len(enc.ids))
            spans.append((doc, a, b))
            if prompt is None and a > 0:
                prompt = tuple(enc.ids[max(0, a - p.prefix_tokens): a])
                target = tuple(enc.ids[a: min(b, a + p.continuation_tokens)])
        if prompt:
            out.append(Sequence("canary", spans[0][0], str(row["id"]), len(spans), prompt, target, tuple(spans)))
    return out


def _samples(run, p) -> list[Sequence]:
    docs = run.documents()
    docs = docs[docs["split"] == "train"].sort_values("document_id")
    need = p.prefix_tokens + p.continuation_tokens
    encs = _encode(run, list(docs["text"]))
    eligible = [(int(d), e.ids) for d, e in zip(docs["document_id"], encs) if len(e.ids) >= need]
    chosen = sorted(random.Random(p.seed).sample(eligible, min(p.sample, len(eligible))))
    return [Sequence("sample", d, "", 1, tuple(ids[: p.prefix_tokens]), tuple(ids[p.prefix_tokens: need]),
                     ((d, p.prefix_tokens, need),)) for d, ids in chosen]


def exposures(run, seqs: list[Sequence]) -> list[np.ndarray]:
    """Per sequence, the sorted distinct steps whose batch held a data-order piece overlapping one of its
    target spans (a batch holding several such pieces, two copies of a canary or a target cut across two
    rows, is one exposure)."""
    order = run.table(ORDER)
    wanted = {doc for s in seqs for doc, _, _ in s.spans}
    by_doc = {d: g for d, g in order[order["document_id"].isin(wanted)].groupby("document_id")}
    out = []
    for s in seqs:
        steps = []
        for doc, a, b in s.spans:
            g = by_doc.get(doc)
            if g is not None:
                hit = (g["offset"] < b) & (g["offset"] + g["length"] > a)
                steps.append(g.loc[hit, "step"].to_numpy())
        out.append(np.unique(np.concatenate(steps)) if steps else np.array([], dtype=np.int64))
    return out
