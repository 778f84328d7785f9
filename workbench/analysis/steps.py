"""Choosing steps: `--steps 0:20000:1000` (a slice over step values) or `--steps 0,1000,5000` (a list)."""

from __future__ import annotations

from collections.abc import Iterable

from workbench.errors import StepNotFound, UsageError


def select(run_steps: Iterable[int], steps=None) -> list[int]:
    """The run's steps chosen by `steps`, sorted.

    `steps` is None (every step), an int, an iterable of ints (each must be in the run: `StepNotFound`
    names the nearest), a `slice` over step values (`start <= s < stop`, `(s - start) % stride == 0`; the
    run's steps that fall on it), or a string in either CLI form.
    """
    have = sorted(int(s) for s in run_steps)
    if steps is None:
        if not have:
            raise StepNotFound(0, have)
        return have
    if isinstance(steps, str):
        steps = parse(steps)
    if isinstance(steps, slice):
        start = 0 if steps.start is None else steps.start
        stride = 1 if steps.step is None else steps.step
        chosen = [s for s in have if s >= start and (steps.stop is None or s < steps.stop) and (s - start) % stride == 0]
        if not chosen:
            span = f"{have[0]}..{have[-1]}" if have else "none"
            raise UsageError(f"no checkpoint of the run falls on steps {_text(steps)} (the run has steps {span})")
        return chosen
    if isinstance(steps, int):
        steps = [steps]
    chosen = sorted({int(s) for s in steps})
    present = set(have)
    for s in chosen:
        if s not in present:
            raise StepNotFound(s, have)
    if not chosen:
        raise UsageError("no steps given")
    return chosen


def parse(text: str) -> slice | list[int]:
    """`start:stop:stride` (each part optional) or a comma-separated list of steps."""
    text = text.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 3:
                raise ValueError
            start, stop, stride = (int(p) if p.strip() else None for p in parts + [""] * (3 - len(parts)))
            if (start is not None and start < 0) or (stop is not None and stop < 0):
                raise UsageError(f"--steps {text!r}: steps are non-negative")
            if stride is not None and stride <= 0:
                raise UsageError(f"--steps {text!r}: the stride must be positive")
            return slice(start, stop, stride)
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--steps {text!r}: write start:stop:stride (e.g. 0:20000:1000) or a list (0,1000,5000)") from None


def _text(s: slice) -> str:
    parts = ["" if v is None else str(v) for v in (s.start, s.stop, s.step)]
    return ":".join(parts if s.step is not None else parts[:2])
