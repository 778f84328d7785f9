"""The Trajectory Workbench dashboard: `wb dashboard RUN [RUN ...]` runs Streamlit on this file.

The sidebar chooses the runs (`?run=`, repeatable) and steps A and B (`?step=`, `?step_b=`); pages add their own
choices (`?layer=`, `?head=`, `?domain=`, ...). Every choice is bound to the URL, so a link reopens the view.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import streamlit as st

from apps.dashboard import generic, state
from workbench.analysis import registry

HERE = Path(__file__).parent
# The page files live in views/, not pages/: Streamlit would also serve a pages/ folder as pages of their own.
# No icons: Streamlit fetches its Material icons from Google's font host, and nothing may leave the machine.


def main() -> None:
    st.set_page_config(page_title="Trajectory Workbench", layout="wide")
    views = HERE / "views"
    pages = [st.Page(views / "overview.py", title="Overview", default=True), *_analysis_pages(),
             st.Page(views / "data.py", title="Data"), st.Page(views / "compare.py", title="Compare"),
             st.Page(generic.other_analyses, title="Other analyses", url_path="other")]
    page = st.navigation(pages)
    _follow_page_parameter(pages, page)
    chosen = _sidebar()
    if chosen is None:
        st.stop()
    st.session_state["selection"] = chosen
    page.run()


def _analysis_pages() -> list:
    """A page per registered analysis, by `page_order`: the script its `page` names (URL path: the file's name),
    or the generic page (URL path: the analysis' name)."""
    pages = []
    for name, cls in sorted(registry().items(), key=lambda item: (item[1].page_order, item[0])):
        title = cls.title or name
        if cls.page is None:
            pages.append(st.Page(functools.partial(generic.analysis_page, name, title), title=title, url_path=name))
        else:
            pages.append(st.Page(importlib.util.find_spec(cls.page).origin, title=title))
    return pages


def _follow_page_parameter(pages: list, current) -> None:
    """`?page=weights` opens that page (the page is otherwise in the URL's path); an unknown one is a notice."""
    wanted = st.query_params.get("page")
    if wanted is None:
        return
    by_name = {p.url_path or "overview": p for p in pages}
    if wanted not in by_name:
        st.warning(f"no page {wanted!r}; pages: {', '.join(by_name)}")
    elif by_name[wanted] is not current:
        rest = [(k, v) for k in st.query_params for v in st.query_params.get_all(k) if k != "page"]
        st.switch_page(by_name[wanted], query_params=rest)


def _sidebar() -> state.Selection | None:
    from workbench.errors import WorkbenchError

    asked = st.query_params.get_all("run")
    options = list(dict.fromkeys(state.started_runs() + asked))
    if not options:
        st.error("No run to show: start the dashboard with `wb dashboard RUN`, or add `?run=PATH` to the URL.")
        return None
    locations = st.sidebar.multiselect("runs", options, default=options[:1], key="run", bind="query-params",
                                       help="the first is the one the pages show; curves overlay them all")
    if not locations:
        st.info("Choose a run in the sidebar.")
        return None
    runs = []
    for location in locations:
        try:
            runs.append(state.open_run(location))
        except WorkbenchError as e:
            st.error(f"{location}: {e}")
    if not runs:
        return None
    axes = state.Axes(
        log_step=st.sidebar.toggle("log step axis", True, key="log_step", bind="query-params",
                                   help="every curve and map over steps; step 0 sits left of step 1 in every run"),
        tokens=st.sidebar.radio("x axis", ["step", "tokens"], horizontal=True, key="x", bind="query-params",
                                help="tokens: each run's curves over the tokens it had seen by each step") == "tokens",
        difference=len(runs) > 1 and st.sidebar.toggle(
            "maps as differences", key="difference", bind="query-params",
            help="several runs' layer × step maps drawn minus the first run's, instead of side by side"))
    if st.sidebar.toggle("follow new checkpoints", key="follow", bind="query-params",
                         help=f"redraw when a run gets a new commit (a run still training); checks every "
                              f"{state.FOLLOW_EVERY_S} s"):
        state.follow(runs)
    steps = state.steps_of(runs[0])
    if not steps:
        return state.Selection(tuple(runs), (), None, None, axes)
    step = state.choose("step A", steps, "step", default=steps[-1], where=st.sidebar)
    step_b = state.choose("step B", steps, "step_b", default=steps[0], where=st.sidebar)
    st.sidebar.caption(f"{runs[0].location}: {len(runs[0].steps)} checkpoints, {len(steps)} steps with data. Step A "
                       "is marked (dashed) on every curve and heatmap over steps; pages with a view of one step show "
                       "A there, Tokens and Compare set B beside it.")
    return state.Selection(tuple(runs), tuple(steps), step, step_b, axes)

main()
