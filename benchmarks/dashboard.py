"""The dashboard on a long trajectory of a large model: time to a rendered Overview and to a rendered layer × step
heatmap in headless Chromium, cold (a freshly started `wb dashboard`) and warm (the same page reloaded).

    .venv/bin/python benchmarks/dashboard.py [--steps 300] [--layers 96] [--heads 96] [--reps 3] [--keep DIR]

The run is LLM-jp-3 172B's shape (96 layers, d_model 12288, 96 heads, 16 KV heads, MLP 38464) with no
checkpoints: results only, written synthetically through the store (`RunWriter.write_results`) for `--steps`
checkpoints 1,000 steps apart — weights (7 matrices per layer + embeddings and unembedding, every statistic),
activations (per layer, per head and top-4 massive activations), lens, similarity (CKA layer × layer),
held-out loss (3 domains, 4,096 tokens) and memorisation (128 sequences) — plus training metrics for every
step (300,000 rows for 300 checkpoints), which the Overview thins to 2,000 points per curve.

Timing: from `page.goto` until every plotly figure of the page has drawn its SVG and Streamlit's status widget is
gone. Cold: `wb dashboard` started anew before each rep (its caches empty; the OS file cache is warm).
Warm: `page.reload()` right after. The peer is the same figure exported by plotly (`fig.write_html`, plotly.js
inline) and opened from disk in the same browser: the cost of drawing it at all.
"""

from __future__ import annotations

import argparse
import os
import platform
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


def timed_load(page, url: str | None, figures: int) -> float:
    """Seconds from navigation (or reload) until `figures` plotly figures have drawn and the script is idle."""
    start = time.perf_counter()
    if url is None:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {figures}",
                           timeout=120_000, polling=50)
    page.wait_for_function("!document.querySelector('[data-testid=stStatusWidget]')", timeout=120_000, polling=50)
    return time.perf_counter() - start


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--layers", type=int, default=96)
    parser.add_argument("--heads", type=int, default=96)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="reuse or keep the synthetic run in this folder")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    import workbench
    import workbench.figures as wf

    print(f"{platform.machine()}, {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "run"
        if not path.exists():
            t0 = time.perf_counter()
            make_run(path, args.steps, args.layers, args.heads)
            print(f"synthetic run: {args.steps} checkpoints x {args.layers} layers x {args.heads} heads, "
                  f"{len(workbench.open(path).metrics()):,} metric rows, written in {time.perf_counter() - t0:.1f} s")
        run = workbench.open(path)
        pages = {"Overview": ("", 5), "Weights heatmap": ("weights", 2), "Activations heatmaps": ("activations", 7)}
        times: dict[str, dict[str, list[float]]] = {name: {"cold": [], "warm": []} for name in pages}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for _ in range(args.reps):
                for name, (url_path, figures) in pages.items():
                    dash = Dashboard(path)
                    page = browser.new_page(viewport={"width": 1400, "height": 1200})
                    times[name]["cold"].append(timed_load(page, f"{dash.url}/{url_path}", figures))
                    times[name]["warm"].append(timed_load(page, None, figures))
                    page.close()
                    dash.stop()
            weights = run.results("weights").load()
            figure = wf.weight_map(weights, "frobenius_norm", "model.layers.{layer}.mlp.up_proj.weight")
            floor = statistics.median(peer(browser, figure, Path(tmp)) for _ in range(args.reps))
            browser.close()
    print(f"\n{'page':24} {'cold s':>8} {'warm s':>8}   (medians of {args.reps}; goal: cold <= 5 s, warm <= 1 s)")
    for name, t in times.items():
        print(f"{name:24} {statistics.median(t['cold']):8.2f} {statistics.median(t['warm']):8.2f}")
    print(f"peer: one layer x step heatmap as a plotly HTML file, opened and drawn: {floor:.2f} s")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
