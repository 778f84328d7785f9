"""What every page shares: the runs and steps chosen in the sidebar (bound to the URL's query parameters), and
data loaded lazily and cached per (run location, snapshot id), so a run that a trainer is still writing shows
new steps after a refresh while nothing already read is read again."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from workbench.api import Run

FOLLOW_EVERY_S = 5  # how often "follow new checkpoints" looks for a new commit


@dataclass(frozen=True)
class Axes:
    """How every figure over training is drawn."""

    log_step: bool = True  # steps (or tokens) on a log axis
    tokens: bool = False  # over the tokens seen by each step instead of steps
    difference: bool = False  # several runs' maps as differences from the first run's, not side by side


@dataclass(frozen=True)
class Selection:
    """The sidebar's choice: runs (the first is the one pages of one run show), steps A and B, the step axis."""

    runs: tuple["Run", ...]
    steps: tuple[int, ...]  # the first run's checkpoints and result steps
    step: int | None  # A
    step_b: int | None  # B
    axes: Axes = Axes()

    @property
    def run(self) -> "Run":
        return self.runs[0]

    @property
    def labels(self) -> dict[str, str]:
        """A short label per run location (the same in every figure)."""
        from workbench.figures.runs import run_labels

        return run_labels([r.location for r in self.runs])


def started_runs() -> list[str]:
    """The runs `wb dashboard` was started with (`streamlit run app.py -- RUN ...` hands them to the script)."""
    return [a for a in sys.argv[1:] if not a.startswith("-")]


@st.cache_resource(max_entries=32, show_spinner=False)
def _repository(location: str):
    from workbench.store.storage import open_repository

    return open_repository(location)


def follow(runs: list["Run"]) -> None:
    """Rerun the app as soon as any of `runs` has a newer commit than the one shown (checked every
    `FOLLOW_EVERY_S` seconds, in a fragment: nothing else reruns while nothing changed)."""

    @st.fragment(run_every=FOLLOW_EVERY_S)
    def check() -> None:
        if any(snapshot(r.location) != r.snapshot for r in runs):
            st.rerun()

    check()


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


@st.cache_data(max_entries=64, show_spinner=False)
def _derived(location: str, snapshot_id: str, name: str, table_name: str, _table) -> "pd.DataFrame":
    return _table(_results(location, snapshot_id, name))  # keyed by the function's name (functions do not hash)


def per_run_table(name: str, table) -> "pd.DataFrame":
    """`table(results)` (a function of `workbench.figures`) of every open run with results `name`, computed once
    per (run, snapshot), stacked with a `run` column first."""
    import pandas as pd

    sel = selection()
    tables = {sel.labels[r.location]: _derived(r.location, r.snapshot, name, table.__qualname__, table)
              for r in sel.runs if name in r.stored_results()}
    return pd.concat(tables, names=["run", None]).reset_index(0)


@st.cache_data(max_entries=64, show_spinner=False)
def _memorization_examples(location: str, snapshot_id: str, step: int, kind: str | None) -> "pd.DataFrame":
    from workbench.figures import memorization_examples

    return memorization_examples(run_at(location, snapshot_id), _results(location, snapshot_id, "memorization"), step,
                                 kind)


def memorization_examples(run: "Run", step: int, kind: str | None = None) -> "pd.DataFrame":
    """`workbench.figures.memorization_examples` of the run's memorisation results, once per (run, snapshot,
    step, kind): decoding them takes a quarter of a second."""
    return _memorization_examples(run.location, run.snapshot, step, kind)


@st.cache_data(max_entries=16, show_spinner=False)
def _tokens_seen(location: str, snapshot_id: str) -> "tuple[np.ndarray, np.ndarray] | None":
    m = _metrics(location, snapshot_id)
    if m is None or "tokens" not in m:
        return None
    steps, seen = m.index.to_numpy(dtype=float), m["tokens"].to_numpy(dtype=float)
    return (np.r_[0.0, steps], np.r_[0.0, seen]) if not len(steps) or steps[0] > 0 else (steps, seen)


def tokens_seen(run: "Run") -> "tuple[np.ndarray, np.ndarray] | None":
    """(steps, tokens seen by each) from the training metrics; None for an imported run."""
    return _tokens_seen(run.location, run.snapshot)


def per_run(name: str) -> "dict[str, xr.Dataset]":
    """The results `name` of every open run that has them, by run label."""
    sel = selection()
    return {sel.labels[r.location]: ds for r in sel.runs if (ds := results(r, name)) is not None}


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
    """A figure as every page shows it: over steps, step A marked (dashed), on the sidebar's step axis (steps or
    tokens, log or linear); the data behind it as a CSV download below. Returns `st.plotly_chart`'s event (with
    `on_select`)."""
    import workbench.figures as wf
    from workbench.figures.runs import tokens_axis

    sel = selection()
    if sel.step is not None:
        wf.mark_step(fig, sel.step)
    if sel.axes.tokens:
        seen = {sel.labels[r.location]: tokens_seen(r) for r in sel.runs}
        tokens_axis(fig, seen, sel.labels[sel.run.location])
    if sel.axes.log_step:
        wf.log_step_axis(fig)
    event = where.plotly_chart(fig, key=key, **kwargs)
    # The CSV is made when the button is clicked, not on every rerun; the click reruns nothing.
    where.download_button("data (CSV)", lambda: wf.figure_data(fig).to_csv(index=False), file_name=f"{key}.csv",
                          mime="text/csv", key=f"{key}-csv", on_click="ignore")
    return event


def runs_chart(name: str, make, key: str, where=st, **kwargs):
    """`make(results)` for every open run with results `name`, as one chart (`chart`): one run's figure as it
    is; several runs' curves overlaid, their maps side by side or as differences from the first (the sidebar's
    choice). A run whose results lack what `make` asks for is named in a caption and left out."""
    from workbench.figures.runs import overlay, side_by_side

    figs, lacking = {}, []
    for label, ds in per_run(name).items():
        try:
            figs[label] = make(ds)
        except KeyError:
            lacking.append(label)
    if lacking:
        where.caption(f"not in {', '.join(lacking)}: their results lack this view")
    if not figs:
        return None
    maps = any(t.type == "heatmap" for fig in figs.values() for t in fig.data)
    fig = side_by_side(figs, selection().axes.difference) if maps else overlay(figs)
    return chart(fig, key, where, **kwargs)


def one_run_caption(what: str = "this view") -> None:
    """With several runs open, say which one a view of one run shows and how to show another."""
    sel = selection()
    if len(sel.runs) > 1:
        st.caption(f"{what} shows {sel.labels[sel.run.location]}, the first run in the sidebar: put another first "
                   "to see that one.")


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
