"""The data pipeline: corpora, tokenizer, packing.

- `documents`: `Document`, `Span`, script classes (`script_of`);
- `synthetic`: the built-in bilingual corpus with planted facts and canaries (`generate`);
- `sources`: user corpora from .txt / JSONL / Parquet files (`load_corpus`);
- `tokenizer`: byte-level BPE (`train_tokenizer`), characters per token, token labels from spans;
- `packing`: held-out split, packing into fixed-length rows, the batch order (`pack`, `batches`).

Modules are imported on demand (torch and tokenizers load only when asked for).
"""
