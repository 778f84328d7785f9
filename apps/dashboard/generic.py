"""The pages of analyses without a page script of their own (`Analysis.page` None, a plugin's say): the
analysis' figure over the steps and at step A (`Analysis.figure`) and its summary table; and "Other
analyses", for results stored in the run by analyses not installed here."""

import streamlit as st

from apps.dashboard import state
from workbench.analysis import Analysis, registry
from workbench.figures import results_figure


def analysis_page(name: str, title: str) -> None:
    """The page of the registered analysis `name`."""
    sel, ds = state.page_of(title, name)
    _show(name, ds, sel.step)


def other_analyses() -> None:
    """The page of stored results that no registered analysis names (drawn as the base `Analysis` draws any)."""
    sel = state.selection()
    st.title("Other analyses")
    names = sorted(set(sel.run.stored_results()) - set(registry()))
    if not names:
        st.info("Every stored analysis of this run has a page of its own. Results of analyses that are not "
                "installed here appear on this page.")
        return
    name = state.choose("analysis", names, "analysis")
    _show(name, state.results(sel.run, name), sel.step)


def _show(name: str, ds, step: int | None) -> None:
    """The figure over the steps of every open run with these results; the first run's at step A and its table."""
    cls = registry().get(name, Analysis)
    st.caption(ds.attrs.get("description", "") or cls.description)
    state.runs_chart(name, lambda d: results_figure(name, d, title=name), "summary")
    if step in ds["step"].values:
        state.chart(results_figure(name, ds, step, title=f"{name} at step {step}"), "at-step")
    st.dataframe(cls.summary(ds))
