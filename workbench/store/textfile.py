"""Text files people hand the workbench (task and evaluation files, HF configs, training presets): one reading
policy for all of them, each problem a one-line `UsageError` naming the file and the line.

The bytes are UTF-8; a leading byte-order mark is dropped (editors on Windows write one); invalid UTF-8 is
refused, naming the line of the first bad byte, never replaced: a replaced character would change what is
scored, probed or configured without a word. Lines end at "\\n" only.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.errors import UsageError


def read_text(path: Path, raw: bytes | None = None) -> str:
    """The text of `path` (or of `raw`, its bytes already read) under the policy above."""
    try:
        data = Path(path).read_bytes() if raw is None else raw
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # e.object: the bytes after any byte-order mark, which holds no "\n"
        line, start = e.object.count(b"\n", 0, e.start) + 1, e.object.rfind(b"\n", 0, e.start) + 1
        raise UsageError(f"{path}:{line}: not valid UTF-8 (byte 0x{e.object[e.start]:02x} at byte {e.start - start} "
                         "of the line); save the file as UTF-8") from None


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in `path` (`what`: which file should hold one, for the error)."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: not a JSON object ({what})")
    return value
