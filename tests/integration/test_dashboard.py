"""The dashboard through Streamlit's AppTest: every page over a run with every analysis stored runs without an
exception and shows the stored numbers; the view follows the URL's query parameters; bad values in the URL are
notices; an imported run shows what it has."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from streamlit.testing.v1 import AppTest

import workbench
import workbench.figures as wf

APP = Path(__file__).resolve().parents[2] / "apps" / "dashboard" / "app.py"
PAGES = ["overview", "weights", "activations", "lens", "similarity", "memorization", "probes", "evaluation", "tokens",
         "data", "compare", "other"]


def app(monkeypatch, *runs, view: str | None = None, **params) -> AppTest:
    """A new session of the app as `wb dashboard RUN ...` starts it, opening page `view` with query parameters
    `params` (after a first session has registered the pages)."""
    monkeypatch.setattr(sys, "argv", [str(APP), *map(str, runs)])
    at = AppTest.from_file(str(APP), default_timeout=120).run()  # registers the pages
    fresh = AppTest.from_file(str(APP), default_timeout=120)  # a new session opening the URL
    fresh.query_params.update({k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in params.items()})
    if view is not None and view != "overview":
        fresh._registered_pages = at._registered_pages
        fresh.switch_page(f"views/{view}.py")
    return fresh.run()


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def values(v) -> np.ndarray:
    """A trace's data as plotly's JSON holds it: a list, or a typed array (dtype, base64 bytes, shape)."""
    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        return a.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=float)


def titled(at: AppTest, words: str) -> dict:
    """The first chart whose title holds `words`."""
    return next(c for c in charts(at) if words in c["layout"]["title"]["text"])


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for kind in ("markdown", "info", "warning", "caption", "code", "error")
                    for e in at.get(kind))


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_without_an_exception(page, analysed_run, monkeypatch):
    at = app(monkeypatch, analysed_run, view=page)
    assert not at.exception, at.exception
    assert not at.get("error"), [e.value for e in at.get("error")]


def test_overview_shows_the_stored_curves_and_coverage(analysed_run, monkeypatch):
    run = workbench.open(analysed_run)
    at = app(monkeypatch, analysed_run)
    heldout = titled(at, "held-out loss")
    loss = run.results("loss")
    for trace in heldout["data"]:
        np.testing.assert_allclose(values(trace["y"]), loss["loss"].sel(domain=trace["name"]).values, rtol=1e-12)
    training = titled(at, "training loss")
    np.testing.assert_allclose(values(training["data"][0]["y"]), wf.smooth(run.metrics()["loss"].to_numpy(), 0.6), rtol=1e-12)
    table = at.dataframe[0].value
    assert set(table["analysis"]) >= {"weights", "loss", "memorization"} and (table["missing"] == 0).all()


def test_weights_page_maps_the_chosen_statistic_and_parameter(analysed_run, monkeypatch):
    template = "model.layers.{layer}.self_attn.q_proj.weight"
    at = app(monkeypatch, analysed_run, view="weights", statistic="spectral_norm", param=template, layer=1)
    ds = workbench.open(analysed_run).results("weights")
    heat = titled(at, f"spectral_norm of {template}")
    want = [[float(ds["spectral_norm"].sel(step=s, param=template.format(layer=l))) for s in ds["step"].values]
            for l in (0, 1)]
    np.testing.assert_allclose(values(heat["data"][0]["z"]), want, rtol=1e-12)
    curve = titled(at, "model.layers.1.self_attn.q_proj.weight over training")
    np.testing.assert_allclose(values(curve["data"][0]["y"]), want[1], rtol=1e-12)


def test_activations_lens_similarity_show_their_results(analysed_run, monkeypatch):
    run = workbench.open(analysed_run)
    at = app(monkeypatch, analysed_run, view="activations", step=15, attn="sink_mass", layer=1, head=2)
    act = run.results("activations")
    np.testing.assert_allclose(values(titled(at, "sink_mass at step 15")["data"][0]["z"]),
                               act["sink_mass"].sel(step=15).transpose("layer", "head").values, rtol=1e-12)
    np.testing.assert_allclose(values(titled(at, "sink_mass, head 2")["data"][0]["z"]),
                               act["sink_mass"].sel(head=2).transpose("layer", "step").values, rtol=1e-12)
    at = app(monkeypatch, analysed_run, view="lens")
    np.testing.assert_allclose(values(titled(at, "kl:")["data"][0]["z"]),
                               run.results("lens")["kl"].transpose("layer", "step").values, rtol=1e-12)
    at = app(monkeypatch, analysed_run, view="similarity", step=20)
    np.testing.assert_allclose(values(titled(at, "CKA between layers at step 20")["data"][0]["z"]),
                               run.results("similarity")["cka"].sel(step=20).values, rtol=1e-12)


def test_memorisation_and_compare_pages(analysed_run, monkeypatch):
    run = workbench.open(analysed_run)
    mem = run.results("memorization")
    at = app(monkeypatch, analysed_run, view="memorization", step=30, kind="sample")
    shown = at.dataframe[0].value
    np.testing.assert_allclose(shown["token match"].values,
                               mem["token_match"].sel(step=30).values[mem["kind"].values == "sample"], rtol=1e-12)
    assert (shown["kind"] == "sample").all()
    at = app(monkeypatch, analysed_run, view="compare", step=30, step_b=5, analysis="lens")
    table = at.dataframe[0].value.set_index(["row", "variable"])
    lens = run.results("lens")
    row = table.loc[("0", "kl")]
    assert row["A"] == pytest.approx(float(lens["kl"].sel(step=5, layer=0)), rel=1e-12)
    assert row["B − A"] == pytest.approx(float(lens["kl"].sel(step=30, layer=0) - lens["kl"].sel(step=5, layer=0)), rel=1e-9)


def test_tokens_and_data_pages(analysed_run, monkeypatch):
    at = app(monkeypatch, analysed_run, view="tokens", step=30, step_b=0)
    assert len(at.get("html")) == 3 and "mean loss" in texts(at)
    run = workbench.open(analysed_run)
    doc = run.find_documents("capital of")[0]["document_id"]
    at = app(monkeypatch, analysed_run, view="data", q="capital of", doc=doc, step=10)
    hits = at.dataframe[0].value
    assert doc in hits["document"].tolist()
    seen = run.steps_seen(doc)
    assert hits.set_index("document").loc[doc, "times seen"] == len(seen)
    batch = at.dataframe[1].value
    assert sorted(batch["document"]) == sorted(p["document_id"] for p in run.batch(10))


def test_unknown_values_in_the_url_are_notices(analysed_run, monkeypatch):
    at = app(monkeypatch, analysed_run, view="weights", step=12345, param="no.such.weight")
    assert not at.exception
    notices = " ".join(w.value for w in at.warning)
    assert "12345" in notices and "no.such.weight" in notices
    at = app(monkeypatch, analysed_run, view="data", doc=999999)
    assert not at.exception and "999999" in " ".join(w.value for w in at.warning)


def test_an_imported_run_shows_what_it_has(monkeypatch, tmp_path, hf_state_dicts, tiny_config):
    path = tmp_path / "imported"
    writer = workbench.create(path, model_config=tiny_config.to_dict())
    for step, sd in hf_state_dicts((0, 10)).items():
        writer.write_checkpoint(step, sd)
    for page in PAGES:
        at = app(monkeypatch, path, view=page)
        assert not at.exception, (page, at.exception)
    at = app(monkeypatch, path)
    assert "no training metrics" in texts(at) and f"wb analyze {path} --only loss" in texts(at)
    assert "training corpus" in texts(app(monkeypatch, path, view="data"))


def test_several_runs_overlay_their_curves(analysed_run, tmp_path, monkeypatch):
    import shutil

    other = shutil.copytree(analysed_run, tmp_path / "second")
    at = app(monkeypatch, analysed_run, other, run=[str(analysed_run), str(other)])
    names = {t["name"] for t in titled(at, "training loss")["data"]}
    assert names == {str(analysed_run), str(other)}


def test_the_page_can_be_named_in_the_query(analysed_run, monkeypatch):
    at = app(monkeypatch, analysed_run, page="nowhere")
    assert not at.exception and "no page 'nowhere'" in " ".join(w.value for w in at.warning)


def test_another_analysis_gets_a_generic_page(analysed_run, tmp_path, monkeypatch):
    """An analysis the dashboard does not know (a plugin's) is browsable through its own `plot` and `summary`."""
    import shutil
    from dataclasses import dataclass

    from workbench.analysis import Analysis, analyze, register, unregister

    @register
    class Norms(Analysis):
        name, kind, dims = "test_norms", "weights", ("layer",)

        @dataclass(frozen=True)
        class Params:
            pass

        def compute(self, ctx):
            w = ctx.matrices("model.layers.{layer}.mlp.up_proj.weight")
            return xr.Dataset({"up_norm": ("layer", w.double().flatten(1).norm(dim=1).numpy(),
                                           {"description": "‖up_proj‖ per layer"})}, coords={"layer": [0, 1]})

    try:
        path = shutil.copytree(analysed_run, tmp_path / "plugin")
        analyze(path, ["test_norms"], workers=0, progress=False)
        at = app(monkeypatch, path, view="other", step=30)
        assert not at.exception
        want = workbench.open(path).results("test_norms")["up_norm"].mean("layer").values
        np.testing.assert_allclose(values(titled(at, "test_norms")["data"][0]["y"]), want, rtol=1e-12)
    finally:
        unregister("test_norms")


def test_probes_page_maps_accuracy_and_selectivity_per_task(analysed_run, monkeypatch):
    ds = workbench.open(analysed_run).results("probes")
    at = app(monkeypatch, analysed_run, view="probes", task="language")
    for var in ("accuracy", "selectivity"):
        np.testing.assert_allclose(values(titled(at, f"language: {var}")["data"][0]["z"]),
                                   ds[var].sel(task="language").transpose("layer", "step").values, rtol=1e-12)
    prev, final = wf.direction_cosines(ds, "language")
    np.testing.assert_allclose(values(titled(at, "with the final step")["data"][0]["z"]), final, rtol=1e-9)
    assert np.allclose(final[:, -1], 1.0)
    assert any("→ fact_ja" in t["name"] for t in titled(at, "cross-lingual transfer")["data"])


def test_evaluation_page_curves_and_facts(analysed_run, monkeypatch):
    ds = workbench.open(analysed_run).results("evaluation")
    at = app(monkeypatch, analysed_run, view="evaluation", score="accuracy", window=3, task="facts-en2ja")
    curves = titled(at, "accuracy (mean over 3 checkpoints)")
    line = next(t for t in curves["data"] if t["name"] == "facts-en")
    np.testing.assert_allclose(values(line["y"]), wf.rolling(ds["accuracy"].sel(task="facts-en").values, 3))
    recall = titled(at, "facts-en2ja: fact_correct per fact")
    asked = ds["fact_correct"].sel(task="facts-en2ja").dropna("fact", how="all")
    np.testing.assert_allclose(values(recall["data"][0]["z"]), asked.transpose("fact", "step").values)
