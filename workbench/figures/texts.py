"""Figures made of text: memorisation examples, evaluation documents coloured by per-token loss, and the
training data behind a step or a query."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from workbench.figures._common import heatmap, steps_of

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from workbench.api import Run


# ---------------------------------------------------------------------------------------------- tokens

def tokens_html(pieces: list[str], colors: list[str], titles: list[str] | None = None) -> str:
    """Text pieces as HTML spans with background colours (and hover titles), whitespace kept."""
    titles = titles or [""] * len(pieces)
    spans = (f'<span style="background:{c}" title="{html.escape(t)}">{html.escape(p)}</span>'
             for p, c, t in zip(pieces, colors, titles))
    return '<div style="white-space:pre-wrap;font-family:monospace;line-height:1.6">' + "".join(spans) + "</div>"


MAX_SPAN = 16  # tokens one span may hold


def spans(tokenizer, ids, start: int = 0) -> list[tuple[slice, str]]:
    """The tokens `ids[start:]` as consecutive spans of whole characters, with their text: a byte-level token may
    hold only some of a character's UTF-8 bytes, which alone decode to U+FFFD, so a span is the fewest tokens
    from its first that decode without one (up to `MAX_SPAN`; a token that never does, as at a cut, stands
    alone). `ids[:start]` are context: a character they begin shows whole in the first span (sliced from `start`)."""
    ids = [int(i) for i in ids]
    out, i = [], 0
    while i < len(ids):
        for j in range(i + 1, min(len(ids), i + MAX_SPAN) + 1):
            if "\ufffd" not in (text := tokenizer.decode(ids[i:j])):
                break
        else:
            j, text = i + 1, tokenizer.decode(ids[i:i + 1])
        if j > start:
            out.append((slice(max(i, start), j), text))
        i = j
    return out


def text_after(tokenizer, context, ids) -> str:
    """The text of `ids` after the tokens `context`, a character cut between them whole (`spans`)."""
    return "".join(t for _, t in spans(tokenizer, [*context, *ids], len(context)))


def spans_html(tokenizer, ids, values, reduce, colors, label, context=()) -> str:
    """The text of `ids` as spans of whole characters (`spans`, after the tokens `context`), each with the value
    `reduce` makes of its tokens' `values`, coloured by `colors` (of every span's value) and hovered as `label` of
    it; the hover of a span of several tokens also names them and each one's value."""
    ids, values = np.asarray(ids), np.asarray(values)
    groups = [(slice(s.start - len(context), s.stop - len(context)), t)
              for s, t in spans(tokenizer, [*context, *ids], len(context))]
    reduced = [reduce(values[s]) for s, _ in groups]
    titles = [label(v) + (f"; tokens {s.start}–{s.stop - 1} (ids {', '.join(map(str, ids[s]))}): "
                          f"{', '.join(map(label, values[s]))}" if s.stop - s.start > 1 else "")
              for (s, _), v in zip(groups, reduced)]
    return tokens_html([t for _, t in groups], colors(reduced), titles)


def shade(values, vmax: float) -> list[str]:
    """White (0) to red (`vmax` and above) background colours."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=float) / max(vmax, 1e-12)), 0, 1)
    return [f"rgba(220,40,40,{a:.2f})" for a in v]


# ---------------------------------------------------------------------------------------------- memorisation

def canary_map(ds: "xr.Dataset", title: str = "canaries: token-level match by step and copies in the corpus"):
    """Canaries: mean token-level match by step × copies in the corpus (the memorisation studies' view)."""
    from workbench.analyses.memorization import canary_map

    return canary_map(ds, title)


SEEN_BINS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def seen_map(ds: "xr.Dataset"):
    """Sampled training sequences: mean token-level match by step × how often the target had been seen by then
    (times-seen binned by powers of two)."""
    ds = ds[["token_match", "times_seen"]].load()
    samples = ds["kind"].values == "sample"
    match = ds["token_match"].values[:, samples]  # [step, sequence]
    seen = ds["times_seen"].values[:, samples]
    bins = np.searchsorted(SEEN_BINS, seen, side="right") - 1
    used = sorted(set(bins.ravel().tolist()))
    grid = np.full((len(used), len(ds["step"])), np.nan)
    for r, b in enumerate(used):
        hit = bins == b
        with np.errstate(invalid="ignore"):
            grid[r] = np.where(hit.any(1), (match * hit).sum(1) / np.maximum(hit.sum(1), 1), np.nan)
    labels = [f"{SEEN_BINS[b]}" + (f"–{SEEN_BINS[b + 1] - 1}" if b + 1 < len(SEEN_BINS) and SEEN_BINS[b + 1] - 1 > SEEN_BINS[b]
                                  else "+" if b + 1 == len(SEEN_BINS) else "") for b in used]
    return heatmap(grid, steps_of(ds), labels, "sampled training sequences: token-level match by step and times seen",
                   "step", "times seen (by that step)", "token match")


def memorization_examples(run: "Run", ds: "xr.Dataset", step: int, kind: str | None = None) -> "pd.DataFrame":
    """The sequences at `step`: kind, canary, document, copies, times seen, match, and the prompt, target and
    greedy continuation as text (a character the prompt cuts shows whole in the target and continuation); `html`
    colours the continuation green where its tokens are the target's."""
    import pandas as pd

    from workbench.analyses.memorization import Memorization, sequences

    params = Memorization.Params(**ds.attrs["analysis"]["params"])
    seqs = sequences(run, params)
    one = ds.sel(step=step).load()
    tok = run.tokenizer
    rows = []
    for i, s in enumerate(seqs):
        if kind is not None and s.kind != kind:
            continue
        cont = one["continuation"].values[i] if "continuation" in one else None
        cont = [int(t) for t in cont if t >= 0] if cont is not None else None
        match = [k < len(s.target) and c == s.target[k] for k, c in enumerate(cont or [])]
        rows.append({
            "sequence": i, "kind": s.kind, "canary": s.canary, "document": s.document_id, "copies": s.copies,
            "times seen": int(one["times_seen"].values[i]), "token match": float(one["token_match"].values[i]),
            "exact": bool(one["exact_match"].values[i]), "prompt": tok.decode(list(s.prompt)),
            "target": text_after(tok, s.prompt, s.target),
            "continuation": text_after(tok, s.prompt, cont) if cont is not None else "(not stored: recompute memorization)",
            "html": spans_html(tok, cont, match, np.all, _match_colors, lambda m: "as the target" if m else "not the target",
                               s.prompt) if cont is not None else "",
        })
    return pd.DataFrame(rows)


def _match_colors(matched) -> list[str]:
    """Green for a span whose every token is the target's, red for one that is not."""
    return ["rgba(40,160,60,0.35)" if m else "rgba(220,40,40,0.25)" for m in matched]


# ---------------------------------------------------------------------------------------------- per-token loss

def eval_documents(ds: "xr.Dataset", eos_id: int | None) -> "pd.DataFrame":
    """The evaluation documents within `loss` results: per domain, the target tokens between end-of-text tokens
    (rows overlap by one token, so a domain's targets are its stream, contiguous); columns domain, document (its
    index in the domain), first (token index), length."""
    import pandas as pd

    targets = ds["target"].values
    domains = ds["token_domain"].values
    rows = []
    for domain in sorted(set(domains.tolist())):
        idx = np.flatnonzero(domains == domain)
        ends = idx[targets[idx] == eos_id] if eos_id is not None else np.array([], dtype=int)
        starts = np.concatenate([[idx[0]], ends + 1])
        stops = np.concatenate([ends, [idx[-1] + 1]])
        for n, (a, b) in enumerate((a, b) for a, b in zip(starts, stops) if b > a):
            rows.append({"domain": domain, "document": n, "first": int(a), "length": int(b - a)})
    return pd.DataFrame(rows)


def learned_steps(token_loss: "xr.DataArray", threshold: float) -> np.ndarray:
    """Per token (`token_loss` [step, token]), the first stored step from which its loss stays below
    `threshold` (-1: never)."""
    loss = token_loss.transpose("step", "token").values  # [step, token]
    below = loss < threshold
    stays = np.flip(np.logical_and.accumulate(np.flip(below, 0), 0), 0)  # below at this step and every later one
    first = np.where(stays.any(0), stays.argmax(0), -1)
    steps = token_loss["step"].values
    return np.where(first >= 0, steps[np.maximum(first, 0)], -1)


def document_loss_html(tokenizer, ds: "xr.Dataset", first: int, length: int, step: int, vmax: float = 8.0) -> str:
    """One evaluation document's text, each span of whole characters shaded by its tokens' total loss at `step`
    (hover: the loss in nats)."""
    part = ds.isel(token=slice(first, first + length))
    loss = part["token_loss"].sel(step=step).values
    return spans_html(tokenizer, part["target"].values, loss, np.sum, lambda v: shade(v, vmax), lambda v: f"{v:.2f} nats")


def document_learned_html(tokenizer, ds: "xr.Dataset", first: int, length: int, threshold: float) -> str:
    """One evaluation document's text, each span of whole characters shaded by when its last token was learnt
    (light: early, dark: late, grey: never), hover: the step."""
    part = ds.isel(token=slice(first, first + length))
    learned = learned_steps(part["token_loss"], threshold)
    last = max(1, int(part["step"].values.max()))
    return spans_html(tokenizer, part["target"].values, learned, lambda s: -1 if (s < 0).any() else s.max(),
                      lambda steps: ["rgba(120,120,120,0.35)" if s < 0 else f"rgba(40,90,200,{0.1 + 0.8 * s / last:.2f})"
                                     for s in steps],
                      lambda s: "never" if s < 0 else f"learnt at step {s}")


# ---------------------------------------------------------------------------------------------- training data

def document_hits(run: "Run", text: str, limit: int = 50) -> "pd.DataFrame":
    """Documents containing `text`, and every training step that saw each ("step N of M")."""
    import pandas as pd

    last = (run.train_config or {}).get("max_steps") or (run.steps[-1] if run.steps else 0)
    rows = []
    for doc in run.find_documents(text)[:limit]:
        seen = run.steps_seen(doc["document_id"])
        rows.append({"document": doc["document_id"], "domain": doc.get("domain"), "split": doc.get("split"),
                     "times seen": len(seen), "seen at": ", ".join(f"step {s} of {last}" for s in seen) or "never",
                     "snippet": doc["snippet"]})
    return pd.DataFrame(rows)


def batch_documents(run: "Run", step: int, context: int = 80) -> "pd.DataFrame":
    """The documents of the batch that trained `step`: position, document, the span it contributed, and its text."""
    import pandas as pd

    docs = run.documents().set_index("document_id")
    enc_cache: dict[int, object] = {}
    rows = []
    for piece in run.batch(step):
        doc = piece["document_id"]
        text = docs.loc[doc, "text"]
        enc = enc_cache.setdefault(doc, run.tokenizer.encode(text, add_special_tokens=False))
        a, b = piece["offset"], piece["offset"] + piece["length"]
        offsets = enc.offsets[a: b] if a < len(enc.offsets) else []
        chars = text[offsets[0][0]: offsets[-1][1]] if offsets else ""
        rows.append({"row": piece["position"], "document": doc, "domain": docs.loc[doc, "domain"],
                     "tokens": f"{a}..{b}", "text": chars[:context] + ("…" if len(chars) > context else "")})
    return pd.DataFrame(rows)
