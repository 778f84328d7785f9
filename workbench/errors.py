"""Errors the workbench raises for expected problems.

Each message is one line that names what is wrong and what to do. The CLI prints it and exits with
`exit_code` (2 for usage errors, 1 for data errors), never a traceback.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


class WorkbenchError(Exception):
    """Base class of every expected workbench error."""

    exit_code = 1


class UsageError(WorkbenchError):
    """The request itself is wrong (a bad option, an unknown name)."""

    exit_code = 2


class RunNotFound(UsageError):
    """The path or URL holds no workbench run."""


class MissingData(WorkbenchError):
    """Data this run does not hold (training metrics, data order or corpus of an imported run, results not
    computed yet)."""


class StepNotFound(WorkbenchError):
    """A step that the run does not hold; the message names the nearest ones."""

    def __init__(self, step: int, steps: Sequence[int], what: str = "checkpoint"):
        self.step, self.nearest = step, nearest_steps(step, steps)
        if not steps:
            hint = f"the run has no {what} yet"
        else:
            hint = "nearest: " + ", ".join(map(str, self.nearest))
        super().__init__(f"step {step} has no {what} in this run ({hint})")


class StepExists(WorkbenchError):
    """Writing a step that is already committed, without `overwrite=True`."""

    def __init__(self, step: int):
        super().__init__(f"step {step} is already in the run; pass overwrite=True (--overwrite) to replace it")


class CorruptData(WorkbenchError):
    """Stored bytes that fail their checksum or cannot be decoded (never an I/O error: see `ReadFailed`)."""

    def __init__(self, array: str, step: int | None, detail: str):
        self.array, self.step = array, step
        super().__init__(f"corrupt data in {_where(array, step)}: {detail}")


class ReadFailed(WorkbenchError):
    """Reading stored bytes failed (a disk or network error): nothing is known to be wrong with the data."""

    def __init__(self, array: str, step: int | None, detail: str):
        self.array, self.step = array, step
        super().__init__(f"could not read {_where(array, step)}: {detail}; the stored data were not checked "
                         "(a disk or network problem?): try again")


def first_line(e: BaseException) -> str:
    """An exception's first line of text (its type's name when it has none): the detail of a one-line error."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _where(array: str, step: int | None) -> str:
    return f"{array} at step {step}" if step is not None else array


class IncompatibleCheckpoint(WorkbenchError):
    """Tensors that disagree with the run's layout or with the model config."""


class UnsafeFormat(WorkbenchError):
    """A checkpoint that can only be read by unpickling."""


class ConcurrentWrite(WorkbenchError):
    """Another process committed to the same run while this one was writing."""


def nearest_steps(step: int, steps: Sequence[int], k: int = 2) -> list[int]:
    """Up to `k` steps on each side of `step` in the sorted sequence `steps`."""
    i = bisect_left(steps, step)
    return list(steps[max(0, i - k) : i + k])
