"""The one commit loop of an `analyze` call: finished results are buffered and appended to the run every
`every` results or `interval` seconds, each time as one Icechunk commit (under the run's commit lock,
rebased over a trainer's concurrent checkpoints). A killed driver loses only uncommitted results."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workbench.analysis.results import analysis_attrs
from workbench.store.results import Update

if TYPE_CHECKING:
    import xarray as xr

    from workbench.analysis.base import Analysis
    from workbench.analysis.plan import Plan
    from workbench.store.writer import RunWriter


class Committer:
    """Buffers the Datasets of finished tasks and writes them into the run, one commit per `flush`."""

    def __init__(self, writer: "RunWriter", plan: "Plan", every: int, interval: float):
        self.writer = writer
        self.analyses = {a.name: a for a in plan.analyses}
        self.attrs = {a.name: analysis_attrs(a, plan.eval_set) for a in plan.analyses}
        self.replace = dict(plan.replace)  # how each analysis' first commit treats stored results; then append
        self.every, self.interval = every, interval
        self.buffer: dict[str, list] = {a.name: [] for a in plan.analyses}
        self.committed: dict[str, list[int]] = {a.name: [] for a in plan.analyses}
        self.oldest: float | None = None

    @property
    def n_buffered(self) -> int:
        return sum(len(b) for b in self.buffer.values())

    @property
    def n_committed(self) -> int:
        return sum(len(c) for c in self.committed.values())

    def add(self, analysis: "Analysis", ds: "xr.Dataset") -> None:
        self.buffer[analysis.name].append(ds)
        if self.oldest is None:
            self.oldest = time.monotonic()

    def seconds_to_due(self) -> float:
        if self.oldest is None:
            return self.interval
        return self.interval - (time.monotonic() - self.oldest)

    def due(self) -> bool:
        n = self.n_buffered
        return n >= self.every or (n > 0 and self.seconds_to_due() <= 0)

    def flush(self) -> None:
        import xarray as xr

        names = [n for n, b in self.buffer.items() if b]
        if not names:
            return
        batches = {n: sorted(self.buffer[n], key=lambda d: int(d["step"].values[0])) for n in names}
        steps = {n: [int(d["step"].values[0]) for d in batches[n]] for n in names}
        updates = {n: Update(xr.concat(batches[n], dim="step", coords="minimal", compat="override", join="exact"),
                             self.attrs[n], self.analyses[n].description, self.replace[n]) for n in names}
        message = "; ".join(f"results {n} steps {_compact(steps[n])}" for n in names)
        self.writer.write_results(updates, message, {"results": steps})
        for n in names:
            self.replace[n] = False
            self.committed[n] += steps[n]
            self.buffer[n] = []
        self.oldest = None


def _compact(steps: list[int]) -> str:
    return ",".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]},...,{steps[-1]} ({len(steps)})"
