"""The dashboard's figures as plain functions: what they draw equals the results they are given, checked
against hand-built datasets and hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import workbench.figures as wf
from workbench.figures import _common

STEPS = np.array([0, 10, 30, 100])
TEMPLATES = ["model.layers.{layer}.mlp.up_proj.weight", "lm_head.weight"]


def weights_ds() -> xr.Dataset:
    """Weights-like results: 2 stacked layers of up_proj and one lm_head, values = 1000·step_index + 10·param."""
    params = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight", "lm_head.weight"]
    values = np.array([[1000 * s + 10 * p for p in range(3)] for s in range(len(STEPS))], dtype=float)
    return xr.Dataset({"frobenius_norm": (("step", "param"), values, {"description": "‖W‖"}),
                       "spectral_norm": (("step", "param"), -values, {"description": "σ_max"})},
                      coords={"step": STEPS, "param": params, "layer": ("param", [0, 1, -1]),
                              "template": ("param", [TEMPLATES[0], TEMPLATES[0], TEMPLATES[1]])})


def activations_ds() -> xr.Dataset:
    rng = np.random.default_rng(0)
    entropy = rng.random((len(STEPS), 3, 2))  # [step, layer, head]
    dims = np.array([[[5, 1], [7, 2], [5, 3]], [[5, 1], [7, 2], [9, 3]], [[6, 1], [7, 2], [9, 3]], [[6, 1], [7, 2], [9, 3]]])
    ratio = np.arange(len(STEPS) * 3 * 2, dtype=float).reshape(len(STEPS), 3, 2)
    return xr.Dataset({"attn_entropy": (("step", "layer", "head"), entropy, {"description": "entropy", "units": "nats"}),
                       "massive_dim": (("step", "layer", "rank"), dims, {"description": "dim"}),
                       "massive_ratio": (("step", "layer", "rank"), ratio, {"description": "ratio"})},
                      coords={"step": STEPS, "layer": [0, 1, 2], "head": [0, 1], "rank": [0, 1]})


def z_of(fig) -> np.ndarray:
    return np.asarray(fig.data[0].z, dtype=float)


def test_weight_map_draws_the_statistic_of_each_layer_at_each_step():
    ds = weights_ds()
    assert wf.weight_kinds(ds) == TEMPLATES  # stacked kinds first
    fig = wf.weight_map(ds, "frobenius_norm", TEMPLATES[0])
    np.testing.assert_array_equal(z_of(fig), ds["frobenius_norm"].values[:, :2].T)  # [layer, step]
    assert list(fig.data[0].x) == STEPS.tolist() and list(fig.data[0].y) == ["0", "1"]  # steps on their own scale
    assert fig.layout.xaxis.type == "linear" and fig.layout.yaxis.type == "category"
    one = wf.weight_map(ds, "spectral_norm", "lm_head.weight")
    np.testing.assert_array_equal(z_of(one), -ds["frobenius_norm"].values[:, 2:].T)
    curves = wf.weight_curves(ds, ["frobenius_norm", "spectral_norm"], TEMPLATES[0], 1)
    np.testing.assert_array_equal(curves.data[0].y, ds["frobenius_norm"].values[:, 1])
    np.testing.assert_array_equal(curves.data[1].y, -ds["frobenius_norm"].values[:, 1])


def test_per_head_variables_are_mapped_at_a_head_or_averaged():
    ds = activations_ds()
    mean = wf.layer_step_map(ds, "attn_entropy")
    np.testing.assert_allclose(z_of(mean), ds["attn_entropy"].values.mean(2).T)
    head1 = wf.layer_step_map(ds, "attn_entropy", head=1)
    np.testing.assert_array_equal(z_of(head1), ds["attn_entropy"].values[:, :, 1].T)
    at = wf.head_layer_map(ds, "attn_entropy", 30)
    np.testing.assert_array_equal(z_of(at), ds["attn_entropy"].values[2])  # [layer, head] at step index 2
    top = wf.layer_step_map(ds, "massive_ratio")  # rank 0
    np.testing.assert_array_equal(z_of(top), ds["massive_ratio"].values[:, :, 0].T)


def test_massive_dimensions_say_which_dimension_and_from_which_step():
    table = wf.massive_dimensions(activations_ds()).set_index(["layer", "dimension"])
    assert table.loc[(0, 5), ["first step", "last step", "steps on top"]].tolist() == [0, 10, 2]
    assert table.loc[(0, 6), ["first step", "last step", "steps on top"]].tolist() == [30, 100, 2]
    assert table.loc[(2, 9), "first step"] == 10 and table.loc[(1, 7), "steps on top"] == 4
    assert table.loc[(0, 6), "max ratio"] == 3 * 6  # ratio = 6 · step index + 2 · layer + rank, at step index 3


def test_smoothing_is_a_debiased_moving_average():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(wf.smooth(x, 0.0), x)
    np.testing.assert_allclose(wf.smooth(np.full(5, 7.0), 0.9), 7.0)  # no bias towards 0 at the start
    w = 0.5
    ema = [0.0]
    for v in x:
        ema.append(ema[-1] * w + (1 - w) * v)
    want = [e / (1 - w ** (i + 1)) for i, e in enumerate(ema[1:])]
    np.testing.assert_allclose(wf.smooth(x, w), want)


def test_long_series_are_thinned_and_the_figure_says_so():
    n = _common.MAX_POINTS * 3 + 7
    t = _common.thin(n)
    assert len(t.index) <= _common.MAX_POINTS and t.index[0] == 0 and t.index[-1] == n - 1
    df = pd.DataFrame({"loss": np.linspace(5, 1, n)}, index=pd.Index(np.arange(n), name="step"))
    fig = wf.metrics_figure({"run": df}, "loss")
    assert len(fig.data[0].x) <= _common.MAX_POINTS and f"of {n:,} points" in fig.layout.title.text
    short = wf.metrics_figure({"run": df.iloc[:100]}, "loss")
    assert len(short.data[0].x) == 100 and "showing" not in short.layout.title.text
    big = _common.heatmap(np.zeros((96, _common.MAX_CELLS // 96 + 500)), np.arange(_common.MAX_CELLS // 96 + 500),
                          np.arange(96), "t", "step", "layer")
    assert np.asarray(big.data[0].z).size <= _common.MAX_CELLS and "steps" in big.layout.title.text


def test_times_seen_map_averages_the_match_of_each_bin():
    ds = xr.Dataset({"token_match": (("step", "sequence"), [[0.0, 0.2, 0.4, 1.0], [0.5, 0.7, 0.9, 1.0]]),
                     "times_seen": (("step", "sequence"), [[0, 0, 1, 5], [1, 3, 3, 0]])},
                    coords={"step": [10, 20], "sequence": np.arange(4),
                            "kind": ("sequence", np.array(["sample", "sample", "sample", "canary"], dtype=object))})
    fig = wf.seen_map(ds)
    assert list(fig.data[0].y) == ["0", "1", "2–3"]
    np.testing.assert_allclose(z_of(fig), [[0.1, np.nan], [0.4, 0.5], [np.nan, 0.8]])


def test_learned_step_is_the_first_from_which_the_loss_stays_low():
    loss = xr.DataArray([[5.0, 5.0, 5.0], [0.5, 2.0, 5.0], [0.4, 0.5, 5.0], [0.3, 0.6, 0.1]],
                        dims=("step", "token"), coords={"step": [0, 10, 20, 30]})
    np.testing.assert_array_equal(wf.learned_steps(loss, 1.0), [10, 20, 30])
    np.testing.assert_array_equal(wf.learned_steps(loss, 0.2), [-1, -1, 30])


def test_evaluation_documents_end_at_the_end_of_text_token():
    eos = 0
    targets = np.array([5, 6, eos, 7, eos, 8, 9, eos, 4])
    domains = np.array(["a"] * 5 + ["b"] * 4, dtype=object)
    ds = xr.Dataset(coords={"token": np.arange(9), "target": ("token", targets), "token_domain": ("token", domains)})
    docs = wf.eval_documents(ds, eos)
    assert docs.to_dict("records") == [
        {"domain": "a", "document": 0, "first": 0, "length": 2}, {"domain": "a", "document": 1, "first": 3, "length": 1},
        {"domain": "b", "document": 0, "first": 5, "length": 2}, {"domain": "b", "document": 1, "first": 8, "length": 1}]


def test_compare_lists_every_statistic_at_a_and_b_with_the_difference():
    ds = weights_ds().drop_vars(["layer", "template"])
    table = wf.compare_statistics({"synthetic": ds}, 10, 100).set_index(["row", "variable"])  # generic summary
    row = table.loc[("model.layers.1.mlp.up_proj.weight", "frobenius_norm")]
    assert (row["A"], row["B"], row["B − A"]) == (1010.0, 3010.0, 2000.0)
    assert len(table) == 2 * 3
    assert wf.compare_statistics({"synthetic": ds}, 10, 55).empty  # a step the results do not hold


def test_coverage_gives_the_command_for_the_missing_steps():
    assert wf.overview.analyze_command("runs/x", "lens", [5, 7], 4) == "wb analyze runs/x --only lens --steps 5,7"
    assert wf.overview.analyze_command("runs/x", "lens", [0, 5, 7, 9], 4) == "wb analyze runs/x --only lens"


@pytest.mark.parametrize("vmax", [1.0, 8.0])
def test_shading_grows_with_the_value(vmax):
    from workbench.figures.texts import shade, tokens_html

    colors = shade([0.0, vmax / 2, vmax, 3 * vmax], vmax)
    alphas = [float(c.rsplit(",", 1)[1].rstrip(")")) for c in colors]
    assert alphas == [0.0, 0.5, 1.0, 1.0]
    html = tokens_html(["a<b", " c"], colors[:2], ["x", "y"])
    assert "a&lt;b" in html and 'title="y"' in html


def test_direction_drift_is_the_cosine_between_steps():
    # one layer, one task, 2 classes x 2 dims; steps: e1, e1 + e2 (45° away), -e1 (opposite the first)
    w = np.array([[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[-1, 0], [np.nan, np.nan]]], dtype=np.float16)  # [step, class, dim]
    ds = xr.Dataset({"direction": (("step", "layer", "task", "class", "dim"), w[:, None, None])},
                    coords={"step": [0, 10, 20], "layer": [0], "task": ["t"]})
    to_prev, to_final = wf.direction_cosines(ds, "t")
    np.testing.assert_allclose(to_prev[0], [np.nan, 2 ** -0.5, -(2 ** -0.5)], atol=1e-3)
    np.testing.assert_allclose(to_final[0], [-1, -(2 ** -0.5), 1], atol=1e-3)


def test_rolling_mean_over_neighbouring_checkpoints():
    np.testing.assert_allclose(wf.rolling(np.array([1.0, 2.0, 6.0, np.nan, 4.0]), 3), [1.5, 3.0, 4.0, 5.0, 4.0])
    np.testing.assert_array_equal(wf.rolling(np.array([1.0, 2.0]), 1), [1.0, 2.0])


def evaluation_ds() -> xr.Dataset:
    """Evaluation-like results of two tasks: 'big' with 40 multiple-choice items, 'few' with 3 (its accuracy moves
    in thirds); chance 0.25 and 0.5."""
    acc = np.array([[0.25, 0.0], [0.5, 1 / 3], [0.6, 2 / 3], [0.7, 2 / 3]])
    task = ("step", "task")
    return xr.Dataset({"accuracy": (task, acc), "accuracy_stderr": (task, np.full_like(acc, 0.05)),
                       "chance": (task, np.tile([0.25, 0.5], (len(STEPS), 1))),
                       "n_choice": (task, np.tile([40, 3], (len(STEPS), 1))),
                       "n_generation": (task, np.zeros((len(STEPS), 2), dtype=int))},
                      coords={"step": STEPS, "task": ["big", "few"]})


@pytest.mark.parametrize("split", [False, True])
def test_score_curves_name_item_counts_and_colour_chance_as_its_task(split):
    fig = wf.score_curves(evaluation_ds(), "accuracy", split=split)
    curves = {t.name: t for t in fig.data if t.mode == "lines+markers"}
    assert set(curves) == {"big (40 items)", "few (3 items)"}
    np.testing.assert_allclose(curves["few (3 items)"].y, [0, 1 / 3, 2 / 3, 2 / 3])
    for task, name in (("big", "big (40 items)"), ("few", "few (3 items)")):
        (chance,) = [t for t in fig.data if t.name == f"{task}: chance"]
        assert chance.line.color == curves[name].line.color
        assert set(np.asarray(chance.y)) == {0.25 if task == "big" else 0.5}
        (band,) = [t for t in fig.data if t.name == f"{name} ± s.e."]
        assert band.fillcolor == curves[name].line.color
    panels = {(t.xaxis, t.yaxis) for t in curves.values()}
    assert len(panels) == (2 if split else 1)  # split: each task on its own axes
    assert wf.item_count(evaluation_ds(), "accuracy", "few") == 3


def test_run_table_shows_the_settings_in_which_runs_differ():
    from types import SimpleNamespace

    def run(name, lr, layers, steps):
        return SimpleNamespace(location=f"/runs/{name}", steps=steps, model_config={"num_hidden_layers": layers,
                               "vocab_size": 96}, train_config={"lr": lr, "seed": 0})

    table = wf.run_table([run("a", 1e-3, 2, [0, 10]), run("b", 3e-4, 2, [0, 10, 20])])
    assert list(table.columns) == ["run", "location", "last step", "checkpoints", "train.lr"]
    assert table["train.lr"].tolist() == [1e-3, 3e-4] and table["last step"].tolist() == [10, 20]
    assert list(wf.run_table([run("a", 1e-3, 2, [0])]).columns) == ["run", "location", "last step", "checkpoints"]


def test_step_zero_sits_at_one_place_on_a_log_axis_for_every_run():
    """Two runs whose first positive steps differ (1 and 100) draw their step-0 points at the same x, left of
    step 1, labelled 0; the other points keep their steps."""
    early = pd.DataFrame({"loss": [5.0, 4.0, 3.0]}, index=pd.Index([0, 1, 10], name="step"))
    late = pd.DataFrame({"loss": [5.0, 2.0]}, index=pd.Index([0, 100], name="step"))
    fig = wf.log_step_axis(wf.metrics_figure({"early": early, "late": late}, "loss"))
    xs = {t.name: np.asarray(t.x, dtype=float) for t in fig.data}
    assert xs["early"][0] == xs["late"][0] == _common.STEP0_ON_LOG < 1
    np.testing.assert_array_equal(xs["early"][1:], [1, 10])
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.ticktext[0] == "0"
    assert fig.layout.xaxis.tickvals[0] == _common.STEP0_ON_LOG
    heat = wf.log_step_axis(wf.layer_step_map(activations_ds(), "attn_entropy"))  # maps: the same axis
    assert heat.layout.xaxis.type == "log"
    np.testing.assert_array_equal(heat.data[0].x, [_common.STEP0_ON_LOG, *STEPS[1:]])


def test_the_step_is_marked_on_curves_and_heatmaps_and_the_data_is_what_is_drawn():
    ds = weights_ds()
    curves = wf.mark_step(wf.weight_curves(ds, ["frobenius_norm"], TEMPLATES[0], 1), 30)
    (marker,) = [t for t in curves.data if t.name == "step A = 30"]
    assert list(marker.x) == [30, 30]
    y = ds["frobenius_norm"].sel(param="model.layers.1.mlp.up_proj.weight").values
    assert list(marker.y) == [y.min(), y.max()]
    grid = wf.mark_step(wf.weight_map(ds, "frobenius_norm", TEMPLATES[0]), 30)
    (column,) = [t for t in grid.data if t.name == "step A = 30"]
    assert list(column.x) == [30, 30] and list(column.y) == ["0", "1"]
    assert len(wf.mark_step(wf.weight_map(ds, "frobenius_norm", TEMPLATES[0]), 31).data) == 2  # no such column
    data = wf.figure_data(grid)  # the heatmap's cells, once (not its click layer or the marker)
    assert len(data) == len(STEPS) * 2 and set(data.columns) == {"trace", "x", "y", "z"}
    cell = data[(data["x"] == 30) & (data["y"] == "1")]
    assert float(cell["z"].iloc[0]) == 1000 * 2 + 10
    lines = wf.figure_data(curves)
    assert lines["trace"].tolist() == ["frobenius_norm"] * len(STEPS)
    np.testing.assert_array_equal(lines["y"], y)


def test_values_spanning_decades_get_a_log_y_axis():
    steps = np.arange(4)
    wide = _common.lines({"gap": (steps, [1e-4, 1e-3, 1e-2, 0.5])}, "t", "gap")
    assert wide.layout.yaxis.type == "log" and wide.layout.yaxis.title.text == "gap (log)"
    for narrow in ([1.0, 2.0, 50.0, 100.0], [-1.0, 1.0, 10.0, 1e4]):  # under 1e3 apart, or not all positive
        assert _common.lines({"x": (steps, narrow)}, "t", "x").layout.yaxis.type is None


def two_runs_heldout():
    domains = ["en", "ja"]
    loss = np.arange(len(STEPS) * 2, dtype=float).reshape(len(STEPS), 2) + 1
    first = xr.Dataset({"loss": (("step", "domain"), loss)}, coords={"step": STEPS, "domain": domains})
    return first, first.assign(loss=first["loss"] * 2)


def test_overlaid_runs_keep_one_colour_per_run_and_one_dash_per_series():
    a, b = two_runs_heldout()
    fig = wf.overlay({"a": wf.heldout_loss_figure(a), "b": wf.heldout_loss_figure(b)})
    palette = wf.runs.palette()
    assert [t.name for t in fig.data] == ["a · en", "a · ja", "b · en", "b · ja"]
    assert [t.line.color for t in fig.data] == [palette[0]] * 2 + [palette[1]] * 2
    assert [t.line.dash for t in fig.data] == ["solid", "dash"] * 2
    for t, (ds, domain) in zip(fig.data, [(a, "en"), (a, "ja"), (b, "en"), (b, "ja")]):
        np.testing.assert_array_equal(t.y, ds["loss"].sel(domain=domain).values)
    assert wf.run_labels(["/x/demo", "/y/demo", "/z/other/"]) == {"/x/demo": "/x/demo", "/y/demo": "/y/demo",
                                                                  "/z/other/": "other"}


def test_runs_maps_side_by_side_share_one_colour_scale_or_show_differences():
    ds = weights_ds()
    later = ds.assign(frobenius_norm=ds["frobenius_norm"] * 3)
    maps = {name: wf.weight_map(d, "frobenius_norm", TEMPLATES[0]) for name, d in (("a", ds), ("b", later))}
    both = wf.side_by_side(dict(maps))
    cells = [t for t in both.data if t.type == "heatmap"]
    assert [c.xaxis for c in cells] == ["x", "x2"] and all(c.coloraxis == "coloraxis" for c in cells)
    a_values = ds["frobenius_norm"].values[:, :2]
    assert (both.layout.coloraxis.cmin, both.layout.coloraxis.cmax) == (a_values.min(), 3 * a_values.max())
    marked = wf.mark_step(both, 30)  # step A on every map
    assert [t.xaxis for t in marked.data if t.name == "step A = 30"] == ["x", "x2"]
    maps = {name: wf.weight_map(d, "frobenius_norm", TEMPLATES[0]) for name, d in (("a", ds), ("b", later))}
    diff = wf.side_by_side(maps, difference=True)
    (cell,) = [t for t in diff.data if t.type == "heatmap"]
    np.testing.assert_array_equal(cell.z, 2 * a_values.T)  # b − a
    assert diff.layout.coloraxis.cmid == 0 and "b − a" in [a.text for a in diff.layout.annotations]
    shorter = wf.weight_map(ds.isel(step=slice(0, 3)), "frobenius_norm", TEMPLATES[0])
    apart = wf.side_by_side({"a": wf.weight_map(ds, "frobenius_norm", TEMPLATES[0]), "b": shorter}, difference=True)
    assert np.isnan(np.asarray(apart.data[0].z, dtype=float)).all()  # other steps: not comparable, not wrong


def test_a_figure_over_steps_redrawn_over_each_runs_tokens():
    a, b = two_runs_heldout()
    fig = wf.overlay({"a": wf.heldout_loss_figure(a), "b": wf.heldout_loss_figure(b)})
    seen = {"a": (STEPS, STEPS * 512), "b": (np.array([0, 100]), np.array([0, 100 * 2048]))}
    wf.tokens_axis(fig, seen, first="a")
    np.testing.assert_array_equal(fig.data[0].x, STEPS * 512)
    np.testing.assert_array_equal(fig.data[2].x, STEPS * 2048)  # interpolated: b's batches hold 2048 tokens
    assert fig.layout.xaxis.title.text == "tokens" and wf.log_step_axis(fig).layout.xaxis.type == "log"
    imported = wf.tokens_axis(wf.overlay({"a": wf.heldout_loss_figure(a), "c": wf.heldout_loss_figure(b)}),
                              {"a": seen["a"], "c": None}, first="a")
    assert [t.name for t in imported.data] == ["a · en", "a · ja"] and "no tokens recorded for c" in \
        imported.layout.title.text


def test_long_titles_wrap_instead_of_being_cut():
    title = "kl: mean KL(final distribution || logit lens of the block's output) [nats], per layer and step"
    fig = _common.heatmap(np.zeros((2, 2)), [0, 1], [0, 1], title, "step", "layer", note="a note")
    *rows, note = fig.layout.title.text.split("<br>")
    assert all(len(r) <= _common.TITLE_WIDTH for r in rows) and " ".join(rows) == title and note == "<sup>a note</sup>"
    assert fig.layout.margin.t > _common.lines({}, "short", "y").layout.margin.t  # room for every line


def memorization_ds() -> xr.Dataset:
    """Memorisation-like results: 3 canaries (1, 1 and 4 copies in the corpus) and one sampled sequence."""
    match = np.array([[0.0, 0.5, 0.25, 1.0], [0.5, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.5], [1.0, 0.5, 1.0, 1.0]])
    per_sequence = {v: (("step", "sequence"), match, {"description": v}) for v in ("exact_match", "times_seen",
                                                                                    "steps_since_seen")}
    return xr.Dataset({**per_sequence, "token_match": (("step", "sequence"), match, {"description": "match"})},
                      coords={"step": STEPS, "sequence": np.arange(4), "kind": ("sequence", ["canary"] * 3 + ["sample"]),
                              "copies": ("sequence", [1, 1, 4, 0])})


def test_an_analysis_draws_its_results_with_its_own_figure():
    """`results_figure` (`wb results --plot`, the generic dashboard page) is the analysis' `figure`: by default its
    summary table drawn (lines over the steps, bars at one); memorisation over the steps as the canaries' map."""
    from workbench.analyses.memorization import Memorization
    from workbench.analysis import Analysis

    ds = weights_ds()
    over_steps = wf.results_figure("not_installed", ds, title="t")
    assert over_steps.to_dict() == Analysis.figure(ds, title="t").to_dict()
    np.testing.assert_array_equal(over_steps.data[0].y, ds["frobenius_norm"].mean("param").values)
    at_step = wf.results_figure("not_installed", ds, 30)
    assert at_step.data[0].type == "bar"
    np.testing.assert_array_equal(at_step.data[0].y, ds["frobenius_norm"].sel(step=30).values)
    mem = memorization_ds()
    canaries = wf.results_figure("memorization", mem, title="m")
    assert canaries.to_dict() == Memorization.figure(mem, title="m").to_dict()
    np.testing.assert_array_equal(z_of(canaries), [mem["token_match"].values[:, :2].mean(1),
                                                   mem["token_match"].values[:, 2]])  # [copies, step]
    assert list(canaries.data[0].y) == ["1", "4"] and canaries.layout.title.text == "m"
    assert Memorization.figure(mem, 30).data[0].type == "bar"  # one step: its sequences
    samples = mem.where(mem["kind"] == "sample", drop=True)
    np.testing.assert_array_equal(Memorization.figure(samples).data[0].y, samples["exact_match"].values[:, 0])


def test_several_statistics_of_a_matrix_get_a_panel_each_with_step_a_on_every_panel():
    ds = weights_ds()
    fig = wf.mark_step(wf.weight_curves(ds, ["frobenius_norm", "spectral_norm"], TEMPLATES[0], 1), 30)
    curves = [t for t in fig.data if t.name != "step A = 30"]
    assert [t.yaxis for t in curves] == ["y", "y2"]  # each statistic on its own scale
    markers = [t for t in fig.data if t.name == "step A = 30"]
    y = ds["frobenius_norm"].sel(param="model.layers.1.mlp.up_proj.weight").values
    assert [(m.yaxis, list(m.y)) for m in markers] == [("y", [y.min(), y.max()]), ("y2", [-y.max(), -y.min()])]
    assert wf.log_step_axis(fig).layout.xaxis2.type == "log"


def test_smoothing_skips_values_that_are_not_finite_as_tensorboard_does():
    x = np.array([np.nan, 2.0, np.inf, 4.0, np.nan, 1.0])
    w, last, n, want = 0.6, 0.0, 0, []
    for v in x:  # TensorBoard's loop
        if np.isfinite(v):
            last, n = last * w + (1 - w) * v, n + 1
        want.append(last / (1 - w**n) if n else np.nan)
    np.testing.assert_allclose(wf.smooth(x, w), want)
