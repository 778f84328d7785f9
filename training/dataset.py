"""The training data of a run: corpus, tokenizer, held-out split, packing and the batch of every step.

Everything is a function of the train config (corpus, data_seed, seq_len), so a resumed run rebuilds the
same batches; the run stores the corpus, the split and the ground truth so that analyses need nothing else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from training.data.documents import Document
from training.data.packing import PackedData, batch_at, pack, split_heldout
from training.data.tokenizer import EOS, encode_documents, token_id, train_tokenizer
from training.train_config import TrainConfig
from workbench.errors import UsageError


@dataclass
class Dataset:
    documents: list[Document]
    tokenizer: object  # tokenizers.Tokenizer
    heldout: dict[str, list[int]]  # domain -> held-out document ids (the evaluation set)
    packed: PackedData
    facts: list[dict] = field(default_factory=list)
    canaries: list[dict] = field(default_factory=list)
    skipped_lines: int = 0

    @property
    def eos_id(self) -> int:
        return self.packed.eos_id

    def batches(self, batch_size: int, start_step: int, max_step: int) -> Iterator[tuple[int, torch.Tensor, list[dict]]]:
        """(step, tokens [batch, seq_len + 1], spans) for training steps start_step..max_step; step s trains
        on batch s - 1 of the packed stream (step 0 is the initial checkpoint)."""
        for step in range(start_step, max_step + 1):
            batch = batch_at(self.packed, batch_size, step - 1)
            yield step, batch.tokens, batch.spans

    def tables(self) -> dict[str, dict[str, object]]:
        """The corpus, split and planted ground truth as run tables."""
        heldout = {i for ids in self.heldout.values() for i in ids}
        docs = {
            "document_id": np.array([d.id for d in self.documents], dtype=np.int64),
            "text": [d.text for d in self.documents],
            "domain": [d.domain for d in self.documents],
            "language": [d.language for d in self.documents],
            "split": ["heldout" if d.id in heldout else "train" for d in self.documents],
            "annotations": [json.dumps([[s.start, s.end, s.label] for s in d.spans if s.kind != "script"])
                            for d in self.documents],
        }
        tables = {"data/documents": docs}
        if self.canaries:
            tables["data/canaries"] = _records(self.canaries)
        if self.facts:
            tables["data/facts"] = _records(self.facts)
        return tables


def _records(rows: list[dict]) -> dict[str, list]:
    """Column form of records; nested values become JSON text."""
    return {k: [r[k] if isinstance(r[k], (int, float, str)) else json.dumps(r[k], ensure_ascii=False) for r in rows]
            for k in rows[0]}


def load_documents(cfg: TrainConfig) -> tuple[list[Document], list[dict], list[dict], int]:
    """(documents, facts, canaries, skipped lines) of the configured corpus."""
    if cfg.corpus == "synthetic":
        from training.data.synthetic import generate

        corpus = generate(seed=cfg.data_seed, n_documents=cfg.n_documents)
        return corpus.documents, corpus.facts, corpus.canaries, 0
    from training.data.sources import load_corpus

    report = load_corpus(cfg.corpus, text_field=cfg.text_field)
    if report.skipped_lines:
        print(f"warning: skipped {report.skipped_lines} undecodable line(s) in {cfg.corpus}", file=sys.stderr)
    return report.documents, [], [], report.skipped_lines


def build_dataset(cfg: TrainConfig, vocab_size: int, tokenizer=None) -> Dataset:
    """Corpus, tokenizer (trained unless given), held-out split and packing for `cfg`."""
    documents, facts, canaries, skipped = load_documents(cfg)
    planted = {i for f in facts for ids in f["document_ids"].values() for i in ids} | {
        i for c in canaries for i in c["document_ids"]}
    train_ids, heldout = split_heldout(documents, cfg.heldout_fraction, cfg.data_seed, keep_in_train=planted)
    if tokenizer is None:
        tokenizer = train_tokenizer((d.text for d in documents), vocab_size=vocab_size)
    if vocab_size < (needed := tokenizer.get_vocab_size()):
        raise UsageError(f"vocab_size {vocab_size} in [model] is smaller than the tokenizer's {needed} tokens; "
                         f"set vocab_size >= {needed}")
    tokenizer.encode_special_tokens = True
    by_id = {d.id: d for d in documents}
    token_ids = encode_documents(tokenizer, [by_id[i] for i in train_ids])
    packed = pack(token_ids, cfg.seq_len, token_id(tokenizer, EOS), cfg.data_seed)
    return Dataset(documents, tokenizer, heldout, packed, facts, canaries, skipped)


def run_documents(run) -> list[Document]:
    """The corpus stored in a run, as Documents (planted fact and canary spans included)."""
    from training.data.documents import Span

    return [Document(int(row.document_id), row.text, row.domain, row.language,
                     [Span(a, b, label) for a, b, label in json.loads(row.annotations)])
            for row in run.documents().itertuples()]
