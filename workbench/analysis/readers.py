"""Reading task and data files: one UTF-8 policy for their text, and JSON Lines records (one JSON object per
non-empty line), each problem a one-line `UsageError` naming the file and the line.

The policy (`read_text`): the bytes are UTF-8; a leading byte-order mark is dropped (editors on Windows write
one); invalid UTF-8 is refused, naming the line of the first bad byte, never replaced: a replaced character
would change what is scored or probed without a word. Lines end at "\\n" only (a JSON string may hold U+2028 or
U+0085 as they are), so line numbers are those of any editor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import UsageError
from workbench.store.textfile import read_text


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
