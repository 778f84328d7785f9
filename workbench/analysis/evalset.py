"""The evaluation set of forward-pass analyses: the run's held-out documents, or a file given with
`--eval-data FILE`.

The driver loads it once and ships it to every worker (Dask scatter), so a file need not be readable by
the workers. Its fingerprint is stored with the results: a re-run on another evaluation set must recompute.

File formats (`workbench.analysis.readers.documents`), one document per record: `.jsonl` (a JSON object per line
with `text`, optional `domain` and `document_id`), `.txt` (one document per non-empty line), `.parquet` (a row
per document, column `text`, optional `domain` and `document_id`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.analysis import readers
from workbench.errors import MissingData, UsageError

if TYPE_CHECKING:
    from workbench.analysis.base import Analysis
    from workbench.store.run import Run


@dataclass(frozen=True)
class EvalSet:
    texts: tuple[str, ...]
    domains: tuple[str, ...]
    document_ids: tuple[int, ...]
    source: str  # "run" (held-out split of the stored corpus) or the file's path

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, d, t in zip(self.document_ids, self.domains, self.texts):
            h.update(json.dumps([i, d, t], ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    def token_ids(self, tokenizer) -> list[list[int]]:
        """Each document's token ids (no special tokens); analyses read them through `StepContext.eval_tokens`,
        which keeps them per worker."""
        return [e.ids for e in tokenizer.encode_batch(list(self.texts), add_special_tokens=False)]


def heldout(run: "Run") -> EvalSet | None:
    """The held-out documents of a trained run, None when the run stores no corpus or no split."""
    df = run.table("data/documents")
    if df is None or "split" not in df:
        return None
    df = df[df["split"] == "heldout"]
    if df.empty:
        return None
    return EvalSet(tuple(df["text"]), tuple(df["domain"]) if "domain" in df else ("all",) * len(df),
                   tuple(int(i) for i in df["document_id"]), "run")


def load_file(path: str | os.PathLike) -> EvalSet:
    records = readers.documents(Path(path), "evaluation set")
    return EvalSet(tuple(str(r["text"]) for r in records), tuple(str(r.get("domain") or "all") for r in records),
                   tuple(int(r.get("document_id", i)) for i, r in enumerate(records)), str(path))


def resolve(run: "Run", analyses: list["Analysis"], eval_data: str | os.PathLike | None) -> EvalSet | None:
    """The evaluation set of the analyses that read one (None when none does), after checking that the run
    has what forward analyses need; else `MissingData` saying what the run lacks and how to supply it."""
    forward = [a.name for a in analyses if a.kind == "forward"]
    reading = [a for a in analyses if a.needs_eval_set()]
    if not forward:
        return None
    eval_set = (load_file(eval_data) if eval_data is not None else heldout(run)) if reading else None
    missing, how = [], []
    if run.tokenizer is None:
        missing.append("tokenizer")
        how.append("store one with `wb import hf ... --tokenizer DIR`")
    if reading and eval_set is None:
        missing.append("evaluation set")
        how.append(f"give one with `--eval-data FILE` ({readers.DOCUMENT_FORMATS})")
    if missing:
        needs = "needs" if len(forward) == 1 else "need"
        raise MissingData(f"{', '.join(forward)} {needs} a forward pass, but {run.location} has no "
                         f"{' and no '.join(missing)} (an imported run?): {'; '.join(how)}")
    if eval_set is None:
        return None
    n_tokens = sum(len(ids) for ids in eval_set.token_ids(run.tokenizer))
    if n_tokens < 2:
        where = "the run's held-out documents" if eval_set.source == "run" else f"evaluation set {eval_set.source}"
        raise UsageError(f"{where} hold {n_tokens} token(s) under the run's tokenizer; a forward analysis needs "
                         f"at least 2 (give a larger one with `--eval-data FILE`)")
    return eval_set
