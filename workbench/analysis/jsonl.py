"""Reading JSON Lines task and data files: one JSON object per non-empty line, or a one-line error naming the
file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import UsageError


def records(path: Path, text: str | None = None) -> Iterator[tuple[str, dict]]:
    """(`file:line`, object) for every non-empty line of `path` (or of `text`, its content already read)."""
    text = path.read_bytes().decode("utf-8", errors="replace") if text is None else text
    for n, line in enumerate(text.splitlines(), 1):
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
