"""User corpora from local files: a folder of .txt files, JSONL files, Parquet files.

- `.txt`: one document per file;
- `.jsonl` (or `.json` holding JSON lines): one document per line, the text in `text_field`;
- `.parquet`: one document per row, the text in column `text_field` (needs `pyarrow`).

A path is one such file or a folder searched recursively (files in sorted path order, so ids are stable).
Undecodable bytes never stop a load: a line that is not valid UTF-8 (or, in JSONL, not a JSON object with
a string `text_field`) is skipped and counted in `LoadReport.skipped_lines`. Empty texts are dropped.
Documents are numbered 0, 1, … in load order; `domain` comes from `domain_field` when a record has it,
else "local"; `language` from `language_field`, else a guess ("ja" or "und").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from training.data.documents import Document, guess_language, script_spans
from workbench.errors import UsageError

SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
MAX_PROBLEMS = 20


@dataclass
class LoadReport:
    """What a load produced: the documents, how many lines were skipped, which files were read."""

    documents: list[Document]
    skipped_lines: int
    files: list[Path]
    problems: list[str] = field(default_factory=list)  # the first `MAX_PROBLEMS` skips, "file:line: why"


@dataclass
class _Record:
    text: str
    domain: str | None = None
    language: str | None = None


class _Skips:
    """Counts skipped lines and keeps the first few reasons."""

    def __init__(self) -> None:
        self.count, self.problems = 0, []

    def add(self, path: Path, line: int, why: str) -> None:
        self.count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{path}:{line}: {why}")


def load_corpus(
    path: str | Path,
    *,
    text_field: str = "text",
    domain_field: str = "domain",
    language_field: str = "language",
    annotate_scripts: bool = True,
) -> LoadReport:
    """Load every document under `path`; raise `UsageError` when nothing usable is found."""
    root = Path(path)
    if not root.exists():
        raise UsageError(f"corpus path {root} does not exist; pass a .txt folder, a .jsonl or a .parquet file")
    files = _corpus_files(root)
    if not files:
        raise UsageError(f"no .txt, .jsonl or .parquet files in {root}; point the corpus at a folder holding some")
    skips = _Skips()
    documents: list[Document] = []
    for file in files:
        kind = SUFFIXES[file.suffix.lower()]
        if kind == "txt":
            records: Iterator[_Record] = _read_txt(file, skips)
        elif kind == "jsonl":
            records = _read_jsonl(file, skips, text_field, domain_field, language_field)
        else:
            records = _read_parquet(file, skips, text_field, domain_field, language_field)
        for record in records:
            if not record.text.strip():
                continue
            spans = script_spans(record.text) if annotate_scripts else []
            language = record.language or guess_language(record.text)
            documents.append(Document(len(documents), record.text, record.domain or "local", language, spans))
    if not documents:
        detail = f" ({skips.count} lines skipped; first: {skips.problems[0]})" if skips.count else ""
        raise UsageError(
            f"the corpus at {root} is empty: no non-empty text in {len(files)} file(s){detail}; "
            f"check the path and --text-field (now {text_field!r})"
        )
    return LoadReport(documents, skips.count, files, skips.problems)


def _corpus_files(root: Path) -> list[Path]:
    if root.is_file():
        if root.suffix.lower() not in SUFFIXES:
            raise UsageError(f"cannot read {root}: use a .txt, .jsonl or .parquet file, or a folder of them")
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def _decode_lines(path: Path, skips: _Skips) -> Iterator[tuple[int, str]]:
    """(line number from 1, text with its "\\n") of each line that is valid UTF-8; lines end at "\\n" only."""
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = data.split(b"\n")
    last = len(lines)
    for number, line in enumerate(lines, 1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as e:
                skips.add(path, number, f"invalid UTF-8 at byte {e.start} of the line")
                continue
        yield number, (line + "\n" if number < last else line)


def _read_txt(path: Path, skips: _Skips) -> Iterator[_Record]:
    text = "".join(line for _, line in _decode_lines(path, skips)).removeprefix("\ufeff")
    yield _Record(text)


def _read_jsonl(
    path: Path, skips: _Skips, text_field: str, domain_field: str, language_field: str
) -> Iterator[_Record]:
    for number, line in _decode_lines(path, skips):
        line = line.strip().removeprefix("\ufeff")
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            skips.add(path, number, f"not JSON ({e.msg})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            skips.add(path, number, f"no string field {text_field!r}")
            continue
        domain, language = record.get(domain_field), record.get(language_field)
        yield _Record(record[text_field], _str_or_none(domain), _str_or_none(language))


def _read_parquet(
    path: Path, skips: _Skips, text_field: str, domain_field: str, language_field: str
) -> Iterator[_Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise UsageError(f"reading {path} needs pyarrow; install it (pip install pyarrow)") from e
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise UsageError(f"{path} has no column {text_field!r} (columns: {', '.join(names)}); pass --text-field")
    columns = [c for c in (text_field, domain_field, language_field) if c in names]
    row = 0
    for batch in parquet.iter_batches(columns=columns):
        texts = batch.column(text_field).to_pylist()
        domains = batch.column(domain_field).to_pylist() if domain_field in columns else [None] * len(texts)
        languages = batch.column(language_field).to_pylist() if language_field in columns else [None] * len(texts)
        for value, domain, language in zip(texts, domains, languages):
            row += 1
            if isinstance(value, bytes):  # a binary column: decode it ourselves
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as e:
                    skips.add(path, row, f"invalid UTF-8 at byte {e.start}")
                    continue
            if not isinstance(value, str):
                if value is not None:
                    skips.add(path, row, f"{text_field!r} is not text")
                continue
            yield _Record(value, _str_or_none(domain), _str_or_none(language))


def _str_or_none(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) and value else None
