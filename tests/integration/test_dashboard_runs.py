"""Several runs open in the dashboard (AppTest): every page draws every run that has its results — curves
overlaid a colour per run, maps side by side or as differences — and pages of one run say which they show; the
x axis can be the tokens each run had seen."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import workbench
from tests.integration.test_dashboard import app, charts, texts, titled, values

RESULT_PAGES = ["weights", "activations", "lens", "similarity", "memorization", "probes", "evaluation"]


@pytest.fixture(scope="module")
def two_runs(analysed_run, tmp_path_factory):
    second = shutil.copytree(analysed_run, tmp_path_factory.mktemp("runs") / "second")
    return analysed_run, second


def open_both(monkeypatch, two_runs, **params):
    return app(monkeypatch, *two_runs, run=[str(r) for r in two_runs], **params)


def run_of(trace: dict) -> str:
    return trace.get("legendgroup") or trace.get("name", "")


@pytest.mark.parametrize("view", RESULT_PAGES + ["overview"])
def test_every_page_draws_both_runs(two_runs, monkeypatch, view):
    at = open_both(monkeypatch, two_runs, view=view, step=30)
    assert not at.exception
    drawn = 0
    for fig in charts(at):
        if fig["layout"].get("xaxis", {}).get("title", {}).get("text") != "step":
            continue
        maps = [t for t in fig["data"] if t["type"] == "heatmap"]
        if maps:  # side by side, one colour scale
            assert len(maps) == 2 and {t.get("xaxis", "x") for t in maps} == {"x", "x2"}, fig["layout"]["title"]
            titles = [a["text"] for a in fig["layout"]["annotations"]]
            assert titles[:2] == ["run", "second"] and all(t.get("coloraxis") == "coloraxis" for t in maps)
            np.testing.assert_array_equal(values(maps[0]["z"]), values(maps[1]["z"]))  # the same results, copied
        else:
            runs = {run_of(t) for t in fig["data"] if not t.get("name", "").startswith("step A")}
            assert {"run", "second"} <= runs, fig["layout"]["title"]
        drawn += 1
    assert drawn, "no figure over steps"


def test_maps_as_differences_from_the_first_run(two_runs, monkeypatch):
    at = open_both(monkeypatch, two_runs, view="lens", difference="true")
    kl = titled(at, "kl")
    (cells,) = [t for t in kl["data"] if t["type"] == "heatmap"]
    assert np.nanmax(np.abs(values(cells["z"]))) == 0  # second − run, of a copy
    assert kl["layout"]["annotations"][0]["text"] == "second − run" and kl["layout"]["coloraxis"]["cmid"] == 0


def test_pages_of_one_run_name_it(two_runs, monkeypatch):
    for view in ("tokens", "data", "compare"):
        at = open_both(monkeypatch, two_runs, view=view)
        assert not at.exception and "shows run, the first run in the sidebar" in texts(at), view


def test_curves_over_the_tokens_each_run_had_seen(two_runs, monkeypatch):
    at = open_both(monkeypatch, two_runs, x="tokens", log_step="false")
    metrics = workbench.open(two_runs[0]).metrics()
    loss = titled(at, "training loss")
    assert loss["layout"]["xaxis"]["title"]["text"] == "tokens"
    (first,) = [t for t in loss["data"] if t["name"] == "run"]
    np.testing.assert_array_equal(values(first["x"]), metrics["tokens"].to_numpy(dtype=float))
    heldout = titled(at, "held-out loss")
    steps = workbench.open(two_runs[0]).results("loss")["step"].values
    want = np.interp(steps, np.r_[0, metrics.index], np.r_[0, metrics["tokens"]])
    np.testing.assert_allclose(values(heldout["data"][0]["x"]), want)
