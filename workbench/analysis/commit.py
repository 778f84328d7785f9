"""The one commit loop of an `analyze` call: finished results are buffered and appended to the run every
`every` results or `interval` seconds, one Icechunk commit per analysis (under the run's commit lock, rebased
over a trainer's concurrent checkpoints), each step with its provenance. A commit that fails costs only that
analysis' buffered steps, which are reported as failed; a killed driver loses only uncommitted results."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workbench.analysis.base import COMPUTE_ATTR
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
        self.failed: list[tuple[str, int, BaseException]] = []  # (analysis, step, why its commit failed)
        self.provenance = plan.provenance
        self.oldest: float | None = None

    @property
    def n_buffered(self) -> int:
        return sum(len(b) for b in self.buffer.values())

    @property
    def n_committed(self) -> int:
        return sum(len(c) for c in self.committed.values())

    def add(self, analysis: "Analysis", step: int, ds: "xr.Dataset") -> None:
        coords = self.provenance[analysis.name][step].coords()
        if (compute := ds.attrs.pop(COMPUTE_ATTR, None)) is not None:
            coords["provenance_code"] += f"; forward passes in {compute}"
        self.buffer[analysis.name].append(ds.assign_coords({k: ("step", [v]) for k, v in coords.items()}))
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
        """Commit every analysis' buffered steps, one commit each; a failure is recorded in `failed`."""
        for name, batch in self.buffer.items():
            if batch:
                self._commit(name, sorted(batch, key=lambda d: int(d["step"].values[0])))
                self.buffer[name] = []
        self.oldest = None

    def _commit(self, name: str, batch: list["xr.Dataset"]) -> None:
        import xarray as xr

        steps = [int(d["step"].values[0]) for d in batch]
        try:
            ds = xr.concat(batch, dim="step", coords="minimal", compat="equals", join="exact")
            update = Update(ds, self.attrs[name], self.analyses[name].description, self.replace[name])
            self.writer.write_results({name: update}, f"results {name} steps {_compact(steps)}", {"results": {name: steps}})
        except Exception as e:  # noqa: BLE001 - reported as this analysis' failure; the others go on
            self.failed += [(name, s, e) for s in steps]
            return
        self.replace[name] = False
        self.committed[name] += steps


def _compact(steps: list[int]) -> str:
    return ",".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]},...,{steps[-1]} ({len(steps)})"
