"""The dashboard as a user runs it: `wb dashboard` on a loopback port, a real headless Chromium (Debian's
`chromium`, which `make test` installs; driven by Playwright, which downloads nothing): every page renders, the
step is in the URL, a saved URL reopens the view, a heatmap cell opens its curves, new checkpoints appear on
refresh, no request leaves the machine, Ctrl-C and SIGTERM stop it cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import psutil
import pytest

import workbench
from tests.conftest import free_port, wb

PAGES = ["", "weights", "activations", "lens", "similarity", "memorization", "probes", "evaluation", "tokens",
         "data?q=capital+of", "compare", "other"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class Dashboard:
    """`wb dashboard RUN ...` in its own process; `stop()` sends Ctrl-C (SIGINT) and returns its output."""

    def __init__(self, *runs: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        wb = Path(sys.executable).with_name("wb")
        self.proc = subprocess.Popen([str(wb), "dashboard", *map(str, runs), "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).read() == b"ok":
                    return
            except OSError:
                time.sleep(0.3)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"wb dashboard did not come up: {self.proc.stdout.read()}")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode, self.proc.stdout.read()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(executable).exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(analysed_run):
    dash = Dashboard(analysed_run)
    yield dash
    code, out = dash.stop()
    assert code == 0 and "dashboard stopped" in out, out


def open_page(browser, url: str, requests: list[str] | None = None):
    """`url` in a new page, once the script has run; every request the page makes is added to `requests`."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
        page.on("websocket", lambda w: requests.append(w.url))
    page.goto(url)
    page.wait_for_selector("[data-testid=stSidebar] >> text=/\\d+ checkpoints/", timeout=60_000)  # the sidebar is done
    settle(page)
    return page


def settle(page) -> None:
    """Wait until the script run is over: the app's script state says so (the status widget shows only once a run
    has lasted a moment, so its absence alone is no sign)."""
    page.wait_for_timeout(500)
    page.wait_for_function("document.querySelector('[data-test-script-state]')?.getAttribute('data-test-script-state')"
                           " === 'notRunning' && !document.querySelector('[data-testid=stStatusWidget]')",
                           timeout=60_000)
    page.wait_for_timeout(300)


def test_every_page_renders_without_an_exception_and_asks_only_this_machine(browser, served, tmp_path):
    asked: list[str] = []
    for name in PAGES:
        page = open_page(browser, f"{served.url}/{name}", asked)
        assert page.query_selector("[data-testid=stException]") is None, page.inner_text("body")[:2000]
        if name in ("", "weights", "lens", "activations"):
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        page.screenshot(path=str(tmp_path / f"{name.split('?')[0] or 'overview'}.png"), full_page=True)
        page.close()
    assert len(list(tmp_path.glob("*.png"))) == len(PAGES)
    assert asked and all(urlparse(u).hostname == "127.0.0.1" for u in asked if not u.startswith("data:")), \
        sorted({u for u in asked if urlparse(u).hostname != "127.0.0.1"})


def test_two_runs_on_every_page(browser, analysed_run, tmp_path):
    """With two runs open, every page of results draws both (maps side by side under each run's name, curves with
    both in the legend), and pages of one run name the run they show."""
    second = shutil.copytree(analysed_run, tmp_path / "second")
    dash = Dashboard(analysed_run, second)
    try:
        for name in PAGES:
            url = f"{dash.url}/{name}{'&' if '?' in name else '?'}run={analysed_run}&run={second}"
            page = open_page(browser, url)
            assert page.query_selector("[data-testid=stException]") is None, page.inner_text("body")[:2000]
            main = page.inner_text("[data-testid=stMain]")
            if name.split("?")[0] in ("tokens", "data", "compare"):
                assert "shows run, the first run in the sidebar" in main, name
            elif name not in ("", "other"):
                page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
                drawn = page.locator(".js-plotly-plot text").all_text_contents()  # subplot titles and legends
                for run in ("run", "second"):
                    assert any(t == run or t.startswith(f"{run} · ") for t in drawn), (name, run, drawn)
            page.close()
    finally:
        code, out = dash.stop()
    assert code == 0, out


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the select box labelled `label`."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def test_the_step_is_in_the_url_and_a_saved_url_reopens_the_view(browser, served):
    page = open_page(browser, f"{served.url}/weights")
    choose(page, "step B", "10")
    assert "step_b=10" in page.url
    choose(page, "statistic", "spectral_norm")
    assert "statistic=spectral_norm" in page.url
    saved = page.url
    page.close()
    again = open_page(browser, saved)
    again.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    assert "spectral_norm of model.layers" in again.inner_text("body")
    assert again.get_by_role("combobox", name="step B", exact=True).input_value() == "10"
    assert again.get_by_role("combobox", name="statistic", exact=True).input_value() == "spectral_norm"
    again.close()


def test_clicking_a_heatmap_cell_opens_its_layer(browser, served):
    page = open_page(browser, f"{served.url}/weights")
    curves_of = "text=/model\\.layers\\.{}\\.\\S+ over training/"  # the title of a layer's curves
    page.wait_for_selector(curves_of.format(0), timeout=30_000)  # the first layer's, until a cell is chosen
    cells = page.locator(".js-plotly-plot").first.locator(".nsewdrag").first.bounding_box()  # the map's plot area
    page.mouse.click(cells["x"] + cells["width"] / 2, cells["y"] + cells["height"] / 4)  # the top row: layer 1
    settle(page)
    assert "layer=1" in page.url
    page.wait_for_selector(curves_of.format(1), timeout=30_000)
    assert page.get_by_role("combobox", name="layer", exact=True).input_value() == "1"
    page.close()


def test_a_charts_csv_download_holds_the_points_it_draws(browser, served, analysed_run):
    page = open_page(browser, f"{served.url}/lens?log_step=false")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="data (CSV)").first.click()  # the first chart: kl, layer x step
    table = pd.read_csv(download.value.path())
    kl = workbench.open(analysed_run).results("lens")["kl"]
    cells = table.dropna(subset=["z"]).pivot(index="y", columns="x", values="z")
    np.testing.assert_allclose(cells.values, kl.transpose("layer", "step").values, rtol=1e-6)
    assert download.value.suggested_filename == "kl.csv" and page.url.endswith("log_step=false")
    page.close()


def test_unknown_step_or_page_in_the_url_is_a_notice(browser, served):
    page = open_page(browser, f"{served.url}/weights?step=777")
    assert page.query_selector("[data-testid=stException]") is None
    assert "777" in page.inner_text("[data-testid=stMain]")
    page.close()
    page = open_page(browser, f"{served.url}/no-such-page")
    assert page.query_selector("[data-testid=stException]") is None
    page.close()
    page = open_page(browser, f"{served.url}/?page=lens&step=10")  # the page named in the query
    page.wait_for_selector("h1:has-text('Logit lens')", timeout=30_000)
    assert "/lens" in page.url and "step=10" in page.url
    page.close()


def test_new_checkpoints_appear_by_themselves_when_followed_else_after_a_refresh(browser, analysed_run, tmp_path):
    path = shutil.copytree(analysed_run, tmp_path / "growing")
    dash = Dashboard(path)
    sidebar = "[data-testid=stSidebar]"
    try:
        following = open_page(browser, f"{dash.url}/?follow=true")
        idle = open_page(browser, dash.url)
        assert "7 checkpoints" in following.locator(sidebar).inner_text()
        run = workbench.open(path)
        workbench.RunWriter(path).write_checkpoint(35, run.checkpoint(30).state_dict())  # as a trainer would
        following.wait_for_selector(f"{sidebar} >> text=/8 checkpoints/", timeout=60_000)  # no reload
        assert "7 checkpoints" in idle.locator(sidebar).inner_text()  # opt-in: the other view stays as it was
        idle.reload()
        idle.wait_for_selector(f"{sidebar} >> text=/8 checkpoints/", timeout=60_000)
    finally:
        code, out = dash.stop()
    assert code == 0, out


def answers(port: int) -> bool:
    """Whether a server listens on `port` of loopback."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_hangup_stops_the_server(analysed_run, sig):
    """`kill PID` (or the terminal closing) stops `wb dashboard` and the Streamlit server it started: the port is
    free within 5 s and no process of it is left."""
    dash = Dashboard(analysed_run)
    started = psutil.Process(dash.proc.pid).children(recursive=True)
    try:
        assert started and answers(dash.port)
        os.kill(dash.proc.pid, sig)  # to `wb` alone, as a service manager sends it
        deadline = time.monotonic() + 5
        while answers(dash.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not answers(dash.port)
        _, left = psutil.wait_procs(started, timeout=max(0.0, deadline - time.monotonic()))
        assert not left, left
        assert dash.proc.wait(timeout=5) == 0 and "dashboard stopped" in dash.proc.stdout.read()
    finally:
        for proc in started:
            if proc.is_running():
                proc.kill()
        dash.stop()


def test_bad_input_is_one_line_and_exit_2(tmp_path, analysed_run):
    code, out = wb("dashboard", tmp_path)
    assert code == 2 and out.startswith("error: ") and len(out.strip().splitlines()) == 1 and "not a run" in out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = wb("dashboard", analysed_run, "--port", port)
    assert code == 2 and f"--port {port}" in out and len(out.strip().splitlines()) == 1
    code, out = wb("dashboard", analysed_run, "--port", 70000)
    assert code == 2 and "--port" in out
