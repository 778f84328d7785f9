"""What each stored step of an analysis was computed from, recorded as data beside its results, and the check
that finds stored steps whose inputs have changed since (they are pending again, with no flag).

Four coordinates along `step` of every results group (JSON text; see docs/FORMAT.md):
- `provenance_checkpoints`: {step: content id} of every checkpoint the step read (the step itself; the previous
  and the initial checkpoint for analyses that compare with them), from the run's checkpoint log;
- `provenance_inputs`: {name: fingerprint} of what else it read: the evaluation set, task files, run tables read
  whole (`table:data/documents`) and tables read up to the step (`table:data/order@step`);
- `provenance_params`: the analysis' parameters;
- `provenance_code`: the code version that computed it and, for forward analyses, how their passes ran
  ("; forward passes in bfloat16 on cpu, streamed"); recorded, not compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr

    from workbench.analysis.base import Analysis
    from workbench.analysis.evalset import EvalSet
    from workbench.store.run import Run

COORDS = ("provenance_checkpoints", "provenance_inputs", "provenance_params", "provenance_code")
ABSENT = "absent"  # the fingerprint of a table the run does not have


@dataclass(frozen=True)
class Provenance:
    """What one step's results read: checkpoint content ids by step, input fingerprints, parameters, code."""

    checkpoints: dict[str, str]
    inputs: dict[str, str]
    params: dict
    code: str

    def coords(self) -> dict[str, str]:
        values = (self.checkpoints, self.inputs, self.params)
        return dict(zip(COORDS, [json.dumps(v, sort_keys=True) for v in values] + [self.code]))

    @classmethod
    def from_coords(cls, values: dict[str, str]) -> "Provenance | None":
        """From the stored coordinates of one step; None for results stored before provenance was recorded."""
        if any(c not in values for c in COORDS):
            return None
        checkpoints, inputs, params = (json.loads(values[c]) for c in COORDS[:3])
        return cls(checkpoints, inputs, params, values[COORDS[3]])


def without(ds: "xr.Dataset") -> "xr.Dataset":
    """`ds` without its provenance coordinates: for tables and figures of the values."""
    return ds.drop_vars([c for c in COORDS if c in ds.variables])


def checkpoints_read(cls: type["Analysis"], step: int, steps: tuple[int, ...]) -> list[int]:
    """The checkpoints one step of `cls` reads, given every step of the run (for the previous and the first)."""
    i = steps.index(step)
    which = {"step": step, "prev": steps[i - 1] if i else None, "init": steps[0]}
    return sorted({which[k] for k in cls.reads_checkpoints if which[k] is not None})


def run_inputs(cls: type["Analysis"], run: "Run", chosen: list[int]) -> dict[int, tuple[dict[str, str], dict[str, str]]]:
    """Per step of `chosen`: the content ids of the checkpoints `cls` reads there and the fingerprints of the
    run tables it reads (whole, or up to the step)."""
    steps, ids = tuple(run.steps), run.checkpoint_ids
    whole = {f"table:{p}": run.table_fingerprint(p) or ABSENT for p in cls.reads_tables}
    upto = {p: run.table_fingerprint(p, tuple(chosen)) for p in cls.reads_tables_upto}
    out = {}
    for s in chosen:
        tables = {**whole, **{f"table:{p}@step": fp[s] if fp else ABSENT for p, fp in upto.items()}}
        out[s] = ({str(c): ids[c] for c in checkpoints_read(cls, s, steps)}, tables)
    return out


def expected(analysis: "Analysis", run: "Run", eval_set: "EvalSet | None", chosen: list[int],
             code: str) -> dict[int, Provenance]:
    """The provenance each step of `chosen` gets when `analysis` computes it now."""
    outside = analysis.inputs(eval_set)
    params = analysis.config()
    return {s: Provenance(ckpts, {**outside, **tables}, params, code)
            for s, (ckpts, tables) in run_inputs(type(analysis), run, chosen).items()}


def why_stale(stored: Provenance | None, now: Provenance) -> str | None:
    """Why a stored step no longer matches what computing it now would read (None: it is current). Only the
    inputs are compared: parameters are the caller's to check (a change of them is a choice, not staleness)."""
    if stored is None:
        return "stored before provenance was recorded"
    if stored.checkpoints.keys() != now.checkpoints.keys():
        return f"it now reads checkpoints {', '.join(now.checkpoints)}, not {', '.join(stored.checkpoints)}"
    for step, content in now.checkpoints.items():
        if stored.checkpoints[step] != content:
            return f"checkpoint {step} was overwritten"
    for name, fp in now.inputs.items():
        if stored.inputs.get(name) != fp:
            return f"{name} changed"
    return None


def stored(run: "Run", name: str) -> dict[int, Provenance | None]:
    """The provenance of every stored step of `name` (None for a step stored before it was recorded)."""
    return {s: Provenance.from_coords(values) for s, values in run.results_coords(name, COORDS).items()}


def stale_steps(run: "Run", name: str) -> dict[int, str]:
    """{step: why} for the stored steps of analysis `name` whose checkpoints or run tables have changed (what
    comes from outside the run, an `--eval-data` or task file, is compared when `wb analyze` is given it)."""
    from workbench.analysis.registry import registry

    cls, have = registry().get(name), stored(run, name)
    if cls is None or not have:
        return {}
    now = run_inputs(cls, run, sorted(have))
    out = {}
    for step, prov in have.items():
        ckpts, tables = now[step]
        current = Provenance(ckpts, {**(prov.inputs if prov else {}), **tables}, {}, "")
        if why := why_stale(prov, current):
            out[step] = why
    return out


def summary(stale: dict[int, str]) -> str:
    """'2 step(s) (10: checkpoint 10 was overwritten; 20: ...)': a short account of stale steps."""
    shown = "; ".join(f"{s}: {why}" for s, why in sorted(stale.items())[:3])
    more = f"; and {len(stale) - 3} more" if len(stale) > 3 else ""
    return f"{len(stale)} step(s) ({shown}{more})"
