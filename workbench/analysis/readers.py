"""Reading the files and columns analyses are given: task files, evaluation sets, JSON-encoded table cells.

- Text under the project's one UTF-8 policy (`read_text`, from `workbench.store.textfile`): a leading BOM
  dropped, invalid UTF-8 refused naming `file:line`, never replaced.
- JSON Lines (`records`): one JSON object per non-empty line. Lines end at "\\n" only (a JSON string may hold
  U+2028 or U+0085 as they are), so line numbers are those of any editor.
- Documents (`documents`): `.txt` (one per non-empty line), `.jsonl` / `.json` (objects with a string `text`)
  or `.parquet` (a `text` column).
- Table cells (`json_cell`): run tables keep nested values as JSON text.
Each problem is a one-line `UsageError` naming the file (and line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import UsageError
from workbench.store.textfile import read_text

DOCUMENT_FORMATS = ".txt, .jsonl or .parquet of text"

__all__ = ["DOCUMENT_FORMATS", "documents", "json_cell", "read_text", "records"]


def records(path: Path, text: str | None = None) -> Iterator[tuple[str, dict]]:
    """(`file:line`, object) for every non-empty line of `path` (or of `text`, its content already read)."""
    text = read_text(path) if text is None else text
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except ValueError:
            raise UsageError(f"{where}: not a JSON object") from None
        if not isinstance(rec, dict):
            raise UsageError(f"{where}: not a JSON object")
        yield where, rec


def documents(p: Path, what: str) -> list[dict]:
    """The documents of a file (`what` names it in errors: "evaluation set"), each a dict with `text`."""
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder; give a {DOCUMENT_FORMATS} file")
    if not p.is_file():
        raise UsageError(f"{what} {p} not found (give a {DOCUMENT_FORMATS} file)")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        out = []
        for where, rec in records(p):
            if not isinstance(rec.get("text"), str):
                raise UsageError(f"{where}: expected a JSON object with a string 'text'")
            out.append(rec)
    elif suffix == ".txt":
        out = [{"text": line} for line in read_text(p).splitlines() if line.strip()]
    elif suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(p)
        if "text" not in df:
            raise UsageError(f"{p} has no 'text' column")
        out = df.to_dict("records")
    else:
        raise UsageError(f"{what} {p}: unknown format {suffix!r}; give a {DOCUMENT_FORMATS} file")
    if not out:
        raise UsageError(f"{what} {p} holds no documents")
    return out


def json_cell(value):
    """A table cell that holds a JSON object or array as text, decoded (other values as they are)."""
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value
