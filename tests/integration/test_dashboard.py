"""The dashboard through Streamlit's AppTest: every page over a run with every analysis stored runs without an
exception and shows the stored numbers; the view follows the URL's query parameters; bad values in the URL are
notices; an imported run shows what it has."""

from __future__ import annotations

import base64
import html
import json
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
import xarray as xr
from streamlit.testing.v1 import AppTest

import workbench
import workbench.figures as wf
from workbench.models.views import hf_tokenizer

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
        if (APP.parent / "views" / f"{view}.py").is_file():
            fresh._registered_pages = at._registered_pages
            fresh.switch_page(f"views/{view}.py")
        else:  # a page without a file in views/ (an analysis' generic page, a plugin's): by the URL's ?page=
            fresh.query_params["page"] = view
    return fresh.run()


def navigation(at: AppTest) -> list[tuple[str, str]]:
    """The pages of the navigation as (URL path, title), in order."""
    return [(p["url_pathname"], p["page_name"]) for p in at._registered_pages.values()]


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
    return next(c for c in charts(at) if words in c["layout"]["title"]["text"].replace("<br>", " "))


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
    *domains, marker = heldout["data"]
    for trace in domains:
        np.testing.assert_allclose(values(trace["y"]), loss["loss"].sel(domain=trace["name"]).values, rtol=1e-12)
    last = run.steps[-1]  # step A by default
    assert marker["name"] == f"step A = {last}" and list(values(marker["x"])) == [last, last]
    assert heldout["layout"]["xaxis"]["type"] == "log" and values(domains[0]["x"])[0] == wf._common.STEP0_ON_LOG
    training = titled(at, "training loss")
    np.testing.assert_allclose(values(training["data"][0]["y"]), wf.smooth(run.metrics()["loss"].to_numpy(), 0.6), rtol=1e-12)
    table = at.dataframe[0].value
    assert set(table["analysis"]) >= {"weights", "loss", "memorization"} and (table["missing"] == 0).all()


@pytest.mark.parametrize("view", PAGES)
def test_step_a_is_marked_on_every_figure_over_steps_and_its_data_downloads(analysed_run, monkeypatch, view):
    """On every page, each figure over steps draws the sidebar's step A (dashed, where the figure has that step),
    and each figure's CSV download holds the points it draws."""
    at = app(monkeypatch, analysed_run, view=view, step=30, log_step="false")
    assert not at.exception
    downloads = [b.proto for b in at.get("download_button") if b.proto.label == "data (CSV)"]
    figures = charts(at)
    # the data (figure_data) is made when the button is clicked, and the click reruns nothing
    assert len(downloads) == len(figures) and all(d.deferred_file_id and d.ignore_rerun for d in downloads)
    for fig in figures:
        if fig["layout"].get("xaxis", {}).get("title", {}).get("text") != "step":
            continue
        assert fig["layout"]["xaxis"].get("type") != "log"  # the sidebar's toggle, off
        steps = {str(int(float(x))) for t in fig["data"] if t.get("x") is not None for x in values_or_labels(t["x"])}
        if "30" in steps:
            assert "step A = 30" in [t.get("name") for t in fig["data"]], fig["layout"]["title"]


def values_or_labels(v) -> list:
    """A trace's x: numbers (plotly's typed arrays too) or category labels."""
    return list(values(v)) if isinstance(v, dict) else [x for x in v if str(x).replace(".", "", 1).isdigit()]


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
    (link,) = at.get("page_link")  # to the example's document on the Data page, keeping the step
    assert parse_qs(link.proto.query_string)["step"] == ["30"] and "doc" in parse_qs(link.proto.query_string)
    at = app(monkeypatch, analysed_run, view="compare", step=30, step_b=5, analysis="lens")
    assert at.title[0].value == "Compare step A = 30 with step B = 5"  # A and B as the sidebar and Tokens name them
    table = at.dataframe[0].value.set_index(["row", "variable"])
    lens = run.results("lens")
    row = table.loc[("0", "kl")]
    assert row["A"] == pytest.approx(float(lens["kl"].sel(step=30, layer=0)), rel=1e-12)
    assert row["B − A"] == pytest.approx(float(lens["kl"].sel(step=5, layer=0) - lens["kl"].sel(step=30, layer=0)), rel=1e-9)


def test_tokens_and_data_pages(analysed_run, monkeypatch):
    at = app(monkeypatch, analysed_run, view="tokens", step=30, step_b=0)
    assert len(at.get("html")) == 3 and "mean loss" in texts(at)
    shown = [m.value for m in at.markdown if m.value.startswith("**step ")]
    assert shown[0].startswith("**step A = 30**") and shown[1].startswith("**step B = 0**")
    run = workbench.open(analysed_run)
    doc = run.find_documents("capital of")[0]["document_id"]
    at = app(monkeypatch, analysed_run, view="data", q="capital of", doc=doc, step=10)
    hits = at.dataframe[0].value
    assert doc in hits["document"].tolist()
    seen = run.steps_seen(doc)
    assert hits.set_index("document").loc[doc, "times seen"] == len(seen)
    batch = at.dataframe[1].value
    assert sorted(batch["document"]) == sorted(p["document_id"] for p in run.batch(10))
    at = app(monkeypatch, analysed_run, view="data", q="capital of")  # a search, no document open yet
    other = at.dataframe[0].value["document"].tolist()[-1]
    at.selectbox(key="doc").select(other).run()  # a hit chosen opens below (its id bound to the URL's doc=)
    assert any(f"Document {other} " in h.value for h in at.subheader)
    assert run.documents().set_index("document_id").loc[other, "text"] in [t.value for t in at.text]


def shown_text(markup: str) -> str:
    """The text a browser shows of `markup`: tags dropped, character references read."""
    return html.unescape(re.sub(r"<[^>]*>", "", markup))


def test_japanese_text_on_the_tokens_page_shows_whole_characters(analysed_run, monkeypatch):
    """The run's byte-level tokens split Japanese characters; choosing a Japanese document shows its text whole,
    never a U+FFFD, at steps A and B and in the learnt view."""
    run = workbench.open(analysed_run)
    ds = run.results("loss")
    at = app(monkeypatch, analysed_run, view="tokens", step=30, step_b=0)
    at.selectbox(key="domain").select("ja").run()
    at.selectbox(key="doc_index").select(1).run()  # document 0 starts at the stream's first target, mid-character
    assert not at.exception
    doc = wf.eval_documents(ds, hf_tokenizer(run).eos_token_id).set_index(["domain", "document"]).loc[("ja", 1)]
    ids = [int(i) for i in ds["target"].values[doc["first"]: doc["first"] + doc["length"]]]
    assert sum("\ufffd" in run.tokenizer.decode([i]) for i in ids) > 10  # characters split across tokens
    want = run.tokenizer.decode(ids)
    assert "\ufffd" not in want
    shown = [shown_text(h.value) for h in at.get("html")]
    assert shown == [want] * 3


def test_compare_shows_a_character_the_prompt_cuts_whole_in_the_target(analysed_run, monkeypatch):
    from workbench.analyses.memorization import Memorization, sequences

    run = workbench.open(analysed_run)
    seqs = sequences(run, Memorization.Params(**run.results("memorization").attrs["analysis"]["params"]))
    decode = run.tokenizer.decode
    assert any(decode(list(s.prompt)).endswith("\ufffd") for s in seqs)  # prompts cut inside a character
    at = app(monkeypatch, analysed_run, view="compare", step=30, step_b=5)
    shown = at.dataframe[-1].value["target"].tolist()
    assert len(shown) == len(seqs)
    for s, target in zip(seqs, shown):  # (a target may end inside a character too: that stays a U+FFFD)
        whole = decode([*s.prompt, *s.target]).rstrip("\ufffd")
        assert whole == decode(list(s.prompt)).rstrip("\ufffd") + target.rstrip("\ufffd")


def test_a_character_split_across_tokens_is_one_span_with_its_tokens_values():
    """A tiny byte-level BPE splits kanji across tokens: the loss view shows every character whole, each span
    shaded by the sum of its tokens' losses, its hover naming the tokens and each one's loss."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = "東京は日本の首都です。富士山は日本一高い山です。"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text] * 3, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                            show_progress=False))
    ids = tok.encode(text).ids
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # characters split across tokens
    loss = np.arange(len(ids), dtype=float) / 10
    ds = xr.Dataset({"token_loss": (("step", "token"), loss[None])}, coords={"step": [10], "target": ("token", ids)})
    markup = wf.document_loss_html(tok, ds, 0, len(ids), 10, vmax=1000)
    assert shown_text(markup) == text and "\ufffd" not in markup
    spans = re.findall(r'<span style="background:rgba\(220,40,40,([0-9.]+)\)" title="([^"]*)">([^<]*)</span>', markup)
    assert "".join(t for _, _, t in spans) == text
    alpha, title, _ = next(s for s in spans if "tokens" in s[1])
    first, last = map(int, re.search(r"tokens (\d+)–(\d+)", title).groups())
    total = loss[first: last + 1].sum()
    assert title.startswith(f"{total:.2f} nats; tokens {first}–{last} (ids {', '.join(map(str, ids[first: last + 1]))})")
    assert float(alpha) == pytest.approx(total / 1000, abs=0.005)


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


def test_tokens_of_a_run_without_a_tokenizer_is_a_notice(monkeypatch, tmp_path, analysed_run):
    """Loss results in a run that stores no tokenizer (results written by other means): Tokens says it cannot
    decode them, and the other pages draw them."""
    from workbench.analysis import registry
    from workbench.analysis.results import analysis_attrs
    from workbench.store.results import Update

    loss = workbench.open(analysed_run).results("loss").load()
    path = tmp_path / "no-tokenizer"
    writer = workbench.create(path, model_config=workbench.open(analysed_run).model_config)
    writer.write_results({"loss": Update(loss, analysis_attrs(registry()["loss"](), None), "held-out loss")}, "loss")
    at = app(monkeypatch, path, view="tokens")
    assert not at.exception and "stores no tokenizer" in texts(at)
    assert not app(monkeypatch, path).exception


def test_several_runs_overlay_their_curves(analysed_run, tmp_path, monkeypatch):
    import shutil

    other = shutil.copytree(analysed_run, tmp_path / "second")
    at = app(monkeypatch, analysed_run, other, run=[str(analysed_run), str(other)])
    names = {t["name"] for t in titled(at, "training loss")["data"]}
    assert names == {"run", "second", f"step A = {workbench.open(analysed_run).steps[-1]}"}  # runs by name
    table = at.dataframe[0].value  # the runs table comes first
    assert table["location"].tolist() == [str(analysed_run), str(other)]
    assert table["last step"].tolist() == [workbench.open(analysed_run).steps[-1]] * 2


def test_the_page_can_be_named_in_the_query(analysed_run, monkeypatch):
    at = app(monkeypatch, analysed_run, page="nowhere")
    assert not at.exception and "no page 'nowhere'" in " ".join(w.value for w in at.warning)


def test_the_navigation_has_a_page_per_registered_analysis(analysed_run, monkeypatch):
    """Overview, then the analyses' pages (each brought by its analysis: `title`, `page`, `page_order`), then the
    pages of the run's data."""
    assert navigation(app(monkeypatch, analysed_run)) == [
        ("", "Overview"), ("weights", "Weights"), ("activations", "Activations"), ("lens", "Logit lens"),
        ("similarity", "Similarity"), ("memorization", "Memorisation"), ("probes", "Probes"),
        ("evaluation", "Evaluation"), ("tokens", "Tokens"), ("data", "Data"), ("compare", "Compare"),
        ("other", "Other analyses")]


def test_an_analysis_brings_its_own_page(analysed_run, tmp_path, monkeypatch):
    """An analysis naming a Streamlit script as its `page` (a plugin's module) gets that page, titled `title`."""
    from workbench.analysis import Analysis, register, unregister

    (tmp_path / "test_norms_page.py").write_text(
        "import streamlit as st\nfrom apps.dashboard import state\n\n"
        "st.title(f'norms of {state.selection().run.location}')\n")
    monkeypatch.syspath_prepend(tmp_path)

    @register
    class Norms(Analysis):
        name, kind, title, page = "test_norms", "weights", "Norms", "test_norms_page"

    try:
        at = app(monkeypatch, analysed_run, view="test_norms_page")
        assert not at.exception, at.exception
        assert ("test_norms_page", "Norms") in navigation(at)
        assert at.title[0].value == f"norms of {analysed_run}"
    finally:
        unregister("test_norms")


def test_another_analysis_gets_a_generic_page(analysed_run, tmp_path, monkeypatch):
    """An analysis without a page script (a plugin's) gets a page of its own, of its `figure` and `summary`, after
    the built-ins; once it is not installed, its stored results are on "Other analyses"."""
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
        at = app(monkeypatch, path, view="test_norms", step=30)
        assert not at.exception
        assert navigation(at)[8:10] == [("tokens", "Tokens"), ("test_norms", "test_norms")]
        want = workbench.open(path).results("test_norms")["up_norm"].mean("layer").values
        np.testing.assert_allclose(values(titled(at, "test_norms")["data"][0]["y"]), want, rtol=1e-12)
        np.testing.assert_allclose(values(titled(at, "test_norms at step 30")["data"][0]["y"]),
                                   workbench.open(path).results("test_norms")["up_norm"].sel(step=30).values, rtol=1e-12)
    finally:
        unregister("test_norms")
    at = app(monkeypatch, path, view="other", step=30)
    assert "test_norms" not in dict(navigation(at)) and not at.exception
    np.testing.assert_allclose(values(titled(at, "test_norms")["data"][0]["y"]), want, rtol=1e-12)


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
    items = int(ds["n_choice"].sel(task="facts-en").max())
    line = next(t for t in curves["data"] if t["name"] == f"facts-en ({items} items)")
    np.testing.assert_allclose(values(line["y"]), wf.rolling(ds["accuracy"].sel(task="facts-en").values, 3))
    recall = titled(at, "facts-en2ja: fact_correct per fact")
    asked = ds["fact_correct"].sel(task="facts-en2ja").dropna("fact", how="all")
    np.testing.assert_allclose(values(recall["data"][0]["z"]), asked.transpose("fact", "step").values)
