"""What every page shares: the runs and steps chosen in the sidebar (bound to the URL's query parameters), and
data loaded lazily and cached per (run location, snapshot id), so a run that a trainer is still writing shows
new steps after a refresh while nothing already read is read again."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from workbench.api import Run

@dataclass(frozen=True)
class Selection:
    """The sidebar's choice: runs (the first is the one most pages show), steps A and B, the step axis."""

    runs: tuple["Run", ...]
    steps: tuple[int, ...]  # the first run's checkpoints and result steps
    step: int | None  # A
    step_b: int | None  # B
    log_step: bool = True  # curves over steps on a log axis

    @property
    def run(self) -> "Run":
        return self.runs[0]


def started_runs() -> list[str]:
    """The runs `wb dashboard` was started with (`streamlit run app.py -- RUN ...` hands them to the script)."""
    return [a for a in sys.argv[1:] if not a.startswith("-")]


@st.cache_resource(max_entries=32, show_spinner=False)
def _repository(location: str):
    from workbench.store.storage import open_repository

    return open_repository(location)


def snapshot(location: str) -> str:
    """The newest snapshot of the run's main branch (one small read per page view)."""
    return _repository(location).lookup_branch("main")


@st.cache_resource(max_entries=16, show_spinner=False)
def run_at(location: str, snapshot_id: str) -> "Run":
    """The run as of one snapshot (immutable, shared by every session)."""
    from workbench.api import Run

    return Run(location, snapshot=snapshot_id)


def open_run(location: str) -> "Run":
    return run_at(location, snapshot(location))


@st.cache_resource(max_entries=64, show_spinner="loading results…")
def _results(location: str, snapshot_id: str, name: str) -> "xr.Dataset":
    return run_at(location, snapshot_id).results(name).load()


def results(run: "Run", name: str) -> "xr.Dataset | None":
    """The stored results of `name`, loaded, or None when the run has none."""
    if name not in run.stored_results():
        return None
    return _results(run.location, run.snapshot, name)


@st.cache_resource(max_entries=16, show_spinner=False)
def _metrics(location: str, snapshot_id: str) -> "pd.DataFrame | None":
    from workbench.errors import MissingData

    try:
        return run_at(location, snapshot_id).metrics()
    except MissingData:
        return None


def metrics(run: "Run") -> "pd.DataFrame | None":
    """Training metrics, or None for an imported run."""
    return _metrics(run.location, run.snapshot)


@st.cache_data(max_entries=64, show_spinner="comparing the weights…")
def _weight_distances(location: str, snapshot_id: str, a: int, b: int) -> "pd.DataFrame":
    from workbench.figures import weight_distances

    return weight_distances(run_at(location, snapshot_id), a, b)


def weight_distances(run: "Run", a: int, b: int) -> "pd.DataFrame":
    """`workbench.figures.weight_distances`, computed once per (run, snapshot, A, B): not on every rerun."""
    return _weight_distances(run.location, run.snapshot, a, b)


def steps_of(run: "Run") -> list[int]:
    """Every step the run has a checkpoint or a result for, sorted."""
    steps = set(run.steps)
    for info in run.stored_results().values():
        steps |= set(info.steps)
    return sorted(steps)


def selection() -> Selection:
    """The selection the entrypoint made for this page view."""
    return st.session_state["selection"]


def choose(label: str, options: list, key: str, default=None, where=st, format_func=str):
    """A select box bound to the query parameter `key` (options shown by `format_func`); an unknown value in the
    URL is named in a notice and replaced by the default."""
    if not options:
        return None
    default = options[0] if default is None else default
    wanted = st.query_params.get(key)
    if wanted is not None and wanted not in [str(o) for o in options]:
        st.warning(f"{key} {wanted!r} from the URL is not among this run's {label}s; showing {default}")
    if key in st.session_state and st.session_state[key] not in options:  # left from another run or parameter
        del st.session_state[key]
    index = 0 if key in st.session_state else options.index(default)  # a value set in the session state wins
    return where.selectbox(label, options, index=index, key=key, bind="query-params", format_func=format_func)


def chart(fig, key: str, where=st, **kwargs):
    """A figure as every page shows it: over steps, on the sidebar's step axis (log or linear) with step A marked
    (dashed); the data behind it as a CSV download below. Returns `st.plotly_chart`'s event (with `on_select`)."""
    import workbench.figures as wf

    sel = selection()
    if sel.log_step:
        wf.log_step_axis(fig)
    if sel.step is not None:
        wf.mark_step(fig, sel.step)
    event = where.plotly_chart(fig, key=key, **kwargs)
    where.download_button("data (CSV)", wf.figure_data(fig).to_csv(index=False), file_name=f"{key}.csv",
                          mime="text/csv", key=f"{key}-csv")
    return event


def pick(key: str, value) -> None:
    """Make `value` the choice of the widget `key` (say, from a click on a figure), once per new value."""
    if st.session_state.get(f"_{key}_picked") != value:
        st.session_state[f"_{key}_picked"] = st.session_state[key] = value


def page_of(title: str, name: str) -> tuple[Selection, "xr.Dataset"]:
    """A page about the results of `name`: its title, the selection and the results, or, when the run has none,
    the command that computes them (and the page stops there)."""
    sel = selection()
    st.title(title)
    ds = results(sel.run, name)
    if ds is None:
        missing(sel.run, name)
        st.stop()
    return sel, ds


def missing(run: "Run", name: str) -> None:
    """Say plainly that `name` is not stored and which command computes it."""
    st.info(f"No `{name}` results in {run.location} yet. Compute them with `wb analyze {run.location} --only {name}`.")
