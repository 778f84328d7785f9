"""Every page of the dashboard in headless Chromium, on an existing run (the demo run) and on a long trajectory of a
large model: cold first render (a freshly started `wb dashboard`) and warm widget change (step A changed).

    .venv/bin/python benchmarks/dashboard.py [--run PATH|synthetic ...] [--steps 300] [--layers 96] [--heads 96]
        [--reps 3] [--keep DIR] [--screenshots DIR]

Runs: each `--run`, a path or `synthetic`; by default runs/demo (`make demo`; from the repository root) when it
exists, and the synthetic run. That one is LLM-jp-3 172B's shape (96 layers, d_model 12288, 96 heads, 16 KV heads,
MLP 38464) with no checkpoints: results only, written synthetically through the store (`RunWriter.write_results`)
for `--steps` checkpoints 1,000 steps apart — weights (7 matrices per layer + embeddings and unembedding, every
statistic), activations (per layer, per head and top-4 massive activations), lens, similarity (CKA layer × layer)
and held-out loss (3 domains, 4,096 tokens) — plus training metrics for every step (300,000 rows for 300
checkpoints), which the Overview thins to 2,000 points per curve.

Pages: every page but "Other analyses". One that shows only a notice that the run lacks its data (the synthetic run
has no memorisation, probes, evaluation or corpus) is listed as such and not timed; so is one that shows an
exception.

Timing, in the page's own clock. A script injected before the page's own records every change of the app root's
`data-test-script-state` (`running`, then `notRunning` as each script run ends — the status widget is no marker:
it appears only once a run has lasted a moment and fades out 200 ms after it), the last DOM change inside any
plotly chart, and the last pointer press. A page is drawn when one more script run than before has ended and the
app is idle, no element is still loading (Streamlit's skeleton), every chart holds its SVG and is visible
(Streamlit draws a chart hidden until it knows its width), and no chart has changed for `QUIET_MS`; it was drawn
at the later of the run's end and the last chart change, so that wait is not counted.
- Cold: `wb dashboard` started anew for each page and rep (its caches empty; the OS file cache warm), the page in
  a new browser context (no HTTP cache); from navigation start until drawn.
- Warm: right after, on the same page, the sidebar's step A set from the last step to the middle one (typed into
  the select box to filter it, then the option clicked); from the click until drawn, with the run that ended
  after the click and `?step=` in the URL the new step.
Goals (issue 21): every first render ≤ 3 s cold on the demo run (any existing run) and ≤ 5 s on the 300 × 96
synthetic one; every widget change ≤ 1 s warm. The peer is the synthetic run's Weights heatmap exported by plotly
(`fig.write_html`, plotly.js inline) and opened from disk in the same browser: the cost of drawing it at all.
`--screenshots DIR` saves the Overview, Weights and Evaluation pages of the first existing run (else the synthetic
one), drawn, 1400 px wide and as tall as their content.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.test_dashboard_browser import CHROMIUM_ARGS, Dashboard  # noqa: E402 - the tests' server, reused

STEP_EVERY = 1000
LLMJP_172B = dict(model_type="llama", vocab_size=99584, hidden_size=12288, intermediate_size=38464,
                  num_attention_heads=96, num_key_value_heads=16, max_position_embeddings=4096)
MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj")
DEMO = Path("runs/demo")  # `make demo`
PAGES = ("", "weights", "activations", "lens", "similarity", "memorization", "probes", "evaluation", "tokens", "data",
         "compare")  # URL paths; "" is the Overview
SHOTS = {"overview": "", "weights": "weights", "evaluation": "evaluation"}  # name: URL path
NO_DATA = re.compile(r"No \S+ results in |data pages need")  # a page's notice that the run lacks what it shows
VIEWPORT = {"width": 1400, "height": 1000}
QUIET_MS = 500  # a page is drawn once no chart has changed for this long
COLD_GOAL_S, COLD_GOAL_SYNTHETIC_S, WARM_GOAL_S = 3, 5, 1  # issue 21


def make_run(path: Path, n_steps: int, layers: int, heads: int) -> Path:
    import xarray as xr

    from workbench.analysis import registry
    from workbench.analysis.results import analysis_attrs
    from workbench.analyses.weights import VARIABLES
    from workbench.store import create
    from workbench.store.layout import parse_name
    from workbench.store.results import Update

    writer = create(path, model_config={**LLMJP_172B, "num_hidden_layers": layers, "num_attention_heads": heads})
    rng = np.random.default_rng(0)
    steps = np.arange(n_steps) * STEP_EVERY
    total = int(steps[-1]) + 1
    writer.append({"metrics": {"step": np.arange(1, total), "loss": 3 + rng.random(total - 1),
                               "lr": np.full(total - 1, 1e-4), "grad_norm": rng.random(total - 1),
                               "tokens": np.arange(1, total) * 4_000_000, "tokens_per_s": rng.random(total - 1) * 1e5,
                               "step_time_s": rng.random(total - 1)}}, "metrics")

    def var(shape, dims, what):
        return (("step", *dims), rng.random((n_steps, *shape)), {"description": what})

    params = [f"model.layers.{l}.{m}.weight" for l in range(layers) for m in MATRICES]
    params += ["model.embed_tokens.weight", "lm_head.weight"]
    keys = [parse_name(p) for p in params]
    weights = xr.Dataset({v: var((len(params),), ("param",), v) for v in VARIABLES},
                         coords={"step": steps, "param": np.array(params, dtype=object),
                                 "layer": ("param", [k.layer if k.layered else -1 for k in keys]),
                                 "template": ("param", np.array([k.template for k in keys], dtype=object))})
    weights["prev_step"] = ("step", steps - STEP_EVERY, {"description": "previous step"})
    weights["init_step"] = ("step", np.zeros(n_steps, dtype=int), {"description": "first step"})
    lh, lr = (layers, heads), (layers, 4)
    activations = xr.Dataset(
        {"resid_norm": var((layers,), ("layer",), "norm"), "resid_kurtosis": var((layers,), ("layer",), "kurtosis"),
         "massive_value": var(lr, ("layer", "rank"), "value"), "massive_ratio": var(lr, ("layer", "rank"), "ratio"),
         "massive_dim": (("step", "layer", "rank"), rng.integers(0, 12288, (n_steps, *lr)), {"description": "dim"}),
         "massive_token": (("step", "layer", "rank"), rng.integers(0, 4096, (n_steps, *lr)), {"description": "token"}),
         "massive_position": (("step", "layer", "rank"), rng.integers(0, 512, (n_steps, *lr)), {"description": "pos"}),
         "fire_rate": var((layers,), ("layer",), "fire"), "dead_units": var((layers,), ("layer",), "dead"),
         "rare_units": var((layers,), ("layer",), "rare"), "attn_entropy": var(lh, ("layer", "head"), "entropy"),
         "sink_mass": var(lh, ("layer", "head"), "sink")},
        coords={"step": steps, "layer": np.arange(layers), "head": np.arange(heads), "rank": np.arange(4)})
    lens = xr.Dataset({"kl": var((layers,), ("layer",), "kl"), "top1_agreement": var((layers,), ("layer",), "top1")},
                      coords={"step": steps, "layer": np.arange(layers)})
    similarity = xr.Dataset({"cka": var((layers, layers), ("layer", "other_layer"), "cka"),
                             "cka_prev": var((layers,), ("layer",), "cka prev"),
                             "prev_step": ("step", steps - STEP_EVERY, {"description": "previous step"})},
                            coords={"step": steps, "layer": np.arange(layers), "other_layer": np.arange(layers)})
    domains, tokens = ["code", "en", "ja"], 4096
    loss = xr.Dataset({"loss": var((3,), ("domain",), "loss"), "perplexity": var((3,), ("domain",), "ppl"),
                       "tokens": (("step", "domain"), np.full((n_steps, 3), tokens // 3), {"description": "tokens"}),
                       "token_loss": (("step", "token"), rng.random((n_steps, tokens)).astype(np.float32),
                                      {"description": "token loss"})},
                      coords={"step": steps, "domain": domains, "token": np.arange(tokens),
                              "token_domain": ("token", np.array([domains[i * 3 // tokens] for i in range(tokens)],
                                                                 dtype=object)),
                              "token_position": ("token", np.arange(tokens) % 512),
                              "target": ("token", rng.integers(1, 99584, tokens))})
    datasets = {"weights": weights, "activations": activations, "lens": lens, "similarity": similarity, "loss": loss}
    analyses = registry()
    writer.write_results({name: Update(ds, analysis_attrs(analyses[name](), None), analyses[name].description)
                          for name, ds in datasets.items()}, "synthetic results")
    return path


# The page's own record, kept from navigation on (times in the page's clock, `performance.now()`, 0 at navigation
# start): each script run's end, the last change inside any plotly chart, the last pointer press.
RECORDER = """(() => {
  const wb = window.__wb = {finished: 0, finishedAt: 0, idle: false, plotAt: 0, pointerAt: 0};
  new MutationObserver(records => {
    const now = performance.now();
    for (const r of records) {
      if (r.attributeName === 'data-test-script-state') {
        const idle = r.target.getAttribute('data-test-script-state') === 'notRunning';
        if (idle && !wb.idle) { wb.finished++; wb.finishedAt = now; }
        wb.idle = idle;
      } else if (r.target.closest?.('[data-testid=stPlotlyChart]')) {
        wb.plotAt = now;
      }
    }
  }).observe(document, {subtree: true, childList: true, attributes: true});
  document.addEventListener('pointerdown', () => { wb.pointerAt = performance.now(); }, true);
})()"""
DRAWN = """({after, step, quiet}) => {
  const wb = window.__wb;
  const charts = [...document.querySelectorAll('[data-testid=stPlotlyChart]')];
  return wb.finished > after && wb.idle
    && (step === null || new URLSearchParams(location.search).get('step') === step)
    && !document.querySelector('[data-testid=stSkeleton]')
    && charts.every(c => c.querySelector('.main-svg')
                         && c.querySelector('.js-plotly-plot').style.visibility !== 'hidden')
    && performance.now() - Math.max(wb.finishedAt, wb.plotAt) >= quiet;
}"""


def drawn(page, after: int = 0, step: str | None = None) -> float:
    """Page time (ms) at which the page was drawn (see the module's docstring): once more than `after` script runs
    are over (and, given `step`, `?step=` is it), the later of the last run's end and the last chart change."""
    page.wait_for_function(DRAWN, arg={"after": after, "step": step, "quiet": QUIET_MS}, timeout=300_000, polling=50)
    return page.evaluate("Math.max(__wb.finishedAt, __wb.plotAt)")


def new_page(browser):
    """A page in a context of its own (an empty HTTP cache), recording from its first navigation on."""
    page = browser.new_page(viewport=VIEWPORT)
    page.add_init_script(RECORDER)
    return page


def not_timed(page) -> str | None:
    """Why the page, just drawn, is not timed: it shows an exception, or only a notice that the run lacks its data."""
    if page.query_selector("[data-testid=stException]"):
        return "exception: " + page.inner_text("[data-testid=stException]").strip().splitlines()[0]
    alerts = page.locator("[data-testid=stMain] [data-testid=stAlert]").all_inner_texts()
    notices = [a for a in alerts if NO_DATA.search(a)]
    if notices and not page.query_selector("[data-testid=stPlotlyChart]"):
        return "no data: " + notices[0].split(". ")[0].strip()
    return None


def time_page(browser, run: Path, url_path: str, step: str) -> tuple[float, float] | str:
    """Cold first render and warm change of step A to `step` (seconds) on one page; or why it is not timed."""
    dash = Dashboard(run)
    page = new_page(browser)
    try:
        page.goto(f"{dash.url}/{url_path}")
        cold = drawn(page) / 1000
        if reason := not_timed(page):
            return reason
        runs = page.evaluate("__wb.finished")
        select = page.get_by_role("combobox", name="step A", exact=True)
        select.click()
        select.fill(step)  # the select box filters its options: the one wanted is in view among many
        page.get_by_role("option", name=step, exact=True).click()
        warm = (drawn(page, runs, step) - page.evaluate("__wb.pointerAt")) / 1000
        return cold, warm
    finally:
        page.close()
        dash.stop()


def screenshots(browser, run: Path, folder: Path) -> None:
    """Overview, Weights and Evaluation of `run`, drawn, as full-page PNGs in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    dash = Dashboard(run)
    try:
        for name, url_path in SHOTS.items():
            page = new_page(browser)
            page.goto(f"{dash.url}/{url_path}")
            drawn(page)
            # Streamlit scrolls the main area and the sidebar inside the window: make it as tall as their content.
            height = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
                                   "[data-testid=stSidebarContent]')].map(e => e.scrollHeight))")
            page.set_viewport_size({**VIEWPORT, "height": max(VIEWPORT["height"], height)})
            page.wait_for_timeout(1000)  # plotly's transitions, and a redraw if the resize changed a chart's width
            drawn(page)
            page.screenshot(path=folder / f"dashboard-{name}.png", full_page=True)
            page.close()
    finally:
        dash.stop()


def peer(browser, figure, folder: Path) -> float:
    """Seconds to open the same figure as a self-contained plotly HTML file and draw it."""
    path = folder / "peer.html"
    figure.write_html(path, include_plotlyjs=True)
    page = browser.new_page()
    start = time.perf_counter()
    page.goto(path.as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    seconds = time.perf_counter() - start
    page.close()
    return seconds


def middle_step(run) -> str:
    """The middle one of the steps the sidebar offers (the run's checkpoints and result steps): step A starts at the
    last, so choosing this one changes it."""
    steps = sorted(set(run.steps).union(*(info.steps for info in run.stored_results().values())))
    return str(steps[len(steps) // 2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", metavar="PATH",
                        help=f"a run to time, or `synthetic` (repeatable; default: {DEMO} when it exists, "
                             "and synthetic)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--layers", type=int, default=96)
    parser.add_argument("--heads", type=int, default=96)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="reuse or keep the synthetic run in this folder")
    parser.add_argument("--screenshots", type=Path, default=None, metavar="DIR",
                        help="save the Overview, Weights and Evaluation pages here (of the first run not synthetic)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    import workbench
    import workbench.figures as wf

    print(f"{platform.machine()}, {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, Path] = {}  # by label
        cold_goal: dict[str, float] = {}  # seconds, by label
        synthetic = None
        for name in args.run or ([str(DEMO)] if DEMO.exists() else []) + ["synthetic"]:
            if name != "synthetic":
                runs[name], cold_goal[name] = Path(name), COLD_GOAL_S
                continue
            label = f"synthetic {args.steps} x {args.layers}"
            synthetic = runs[label] = args.keep or Path(tmp) / "run"
            cold_goal[label] = COLD_GOAL_SYNTHETIC_S
            if not synthetic.exists():
                t0 = time.perf_counter()
                make_run(synthetic, args.steps, args.layers, args.heads)
                print(f"synthetic run: {args.steps} checkpoints x {args.layers} layers x {args.heads} heads, "
                      f"{len(workbench.open(synthetic).metrics()):,} metric rows, "
                      f"written in {time.perf_counter() - t0:.1f} s")
        middle = {label: middle_step(workbench.open(path)) for label, path in runs.items()}
        times: dict[tuple[str, str], list[tuple[float, float]]] = {(run, page): [] for run in runs for page in PAGES}
        skipped: dict[tuple[str, str], str] = {}  # why a page is not timed
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for _ in range(args.reps):
                for (label, page), t in times.items():
                    if (label, page) in skipped:
                        continue
                    result = time_page(browser, runs[label], page, middle[label])
                    if isinstance(result, str):
                        skipped[label, page] = result
                    else:
                        t.append(result)
                    print(f"  {label} /{page}:", result if isinstance(result, str) else "%.2f s cold, %.2f s warm"
                          % result, flush=True)
            if args.screenshots:
                shown = next((path for path in runs.values() if path != synthetic), synthetic)
                screenshots(browser, shown, args.screenshots)
            if synthetic is not None:
                weights = workbench.open(synthetic).results("weights").load()
                figure = wf.weight_map(weights, "frobenius_norm", "model.layers.{layer}.mlp.up_proj.weight")
                floor = statistics.median(peer(browser, figure, Path(tmp)) for _ in range(args.reps))
            browser.close()
    print(f"\n{'run':22} {'page':14} {'cold s':>7} {'warm s':>7}  over goal   (medians of {args.reps}; goals: "
          f"cold <= {COLD_GOAL_S} s, <= {COLD_GOAL_SYNTHETIC_S} s on the synthetic run; warm <= {WARM_GOAL_S} s)")
    for (label, page), t in times.items():
        name = page or "overview"
        if (label, page) in skipped:
            print(f"{label:22} {name:14} {skipped[label, page]}")
            continue
        cold, warm = (round(statistics.median(c), 2) for c in zip(*t))  # as printed
        goals = {"cold": (cold, cold_goal[label]), "warm": (warm, WARM_GOAL_S)}
        over = ", ".join(f"{what} (> {goal} s)" for what, (s, goal) in goals.items() if s > goal)
        print(f"{label:22} {name:14} {cold:7.2f} {warm:7.2f}  {over}")
    if synthetic is not None:
        print(f"peer: one layer x step heatmap as a plotly HTML file, opened and drawn: {floor:.2f} s")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
