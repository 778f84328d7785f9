"""The analysis engine without a cluster (`workers=0`): registry, step choice, requirement checks, stored
results, incremental commits and bad input. The Dask paths are in tests/integration/test_analyze.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import xarray as xr

import workbench
from tests.conftest import wb
from workbench.analysis import Analysis, AnalysisFailed, ResultsMismatch, analyze, register, select_steps, unregister
from workbench.errors import MissingData, StepNotFound, UsageError

STEPS = (0, 10, 20, 30)


class Echo(Analysis):
    """Weights-only test analysis: the step and the sum of one tensor, with a `domain`-less scalar."""

    name = "test_echo"
    kind = "weights"
    description = "the sum of lm_head [times scale]"

    @dataclass(frozen=True)
    class Params:
        scale: float = 1.0

    def compute(self, ctx):
        w = ctx.matrices("lm_head.weight")
        return xr.Dataset({"total": ((), float(w.double().sum()) * self.params.scale, {"description": "sum of lm_head", "units": "1"})})


class Tokens(Analysis):
    """Forward-kind test analysis: tokens of the evaluation set per domain (no model needed)."""

    name = "test_tokens"
    kind = "forward"
    dims = ("domain",)

    def compute(self, ctx):
        ids = ctx.eval_set.token_ids(ctx.tokenizer)
        domains = sorted(set(ctx.eval_set.domains))
        counts = [sum(len(t) for t, d in zip(ids, ctx.eval_set.domains) if d == dom) for dom in domains]
        return xr.Dataset({"tokens": ("domain", np.array(counts), {"description": "tokens in the evaluation set"})},
                          coords={"domain": np.array(domains, dtype=object)})


class Broken(Analysis):
    name = "test_broken"
    kind = "weights"

    def compute(self, ctx):
        if ctx.step == 20:
            return xr.Dataset({"x": ("step", [1.0], {"description": "bad: has a step dimension"})})
        return xr.Dataset({"x": ((), 1.0, {"description": "fine"})})


class Intruder(Analysis):
    """Commits a new checkpoint while analysing step 10, as a trainer writing the same run would."""

    name = "test_intruder"
    kind = "weights"
    state_dict: dict = {}

    def compute(self, ctx):
        if ctx.step == 10:
            workbench.RunWriter(ctx.run.location).write_checkpoint(40, Intruder.state_dict)
        return xr.Dataset({"x": ((), float(ctx.step), {"description": "the step"})})


@pytest.fixture(autouse=True)
def test_analyses():
    for cls in (Echo, Tokens, Broken, Intruder):
        register(cls)
    yield
    for cls in (Echo, Tokens, Broken, Intruder):
        unregister(cls.name)


@pytest.fixture
def run_path(seeded_run):
    return seeded_run(STEPS)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "the", "cat", "sat", "le", "chat"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def result_commits(path) -> list[dict]:
    repo = workbench.open(path).repo
    return [s.metadata["results"] for s in repo.ancestry(branch="main") if "results" in (s.metadata or {})]


def test_unknown_analysis_lists_the_valid_ones(run_path):
    with pytest.raises(UsageError, match=r"unknown analysis 'nope'; valid analyses: .*test_echo.*weights"):
        analyze(run_path, ["nope"], workers=0)
    code, out = wb("analyze", run_path, "--only", "weights,nope", "--workers", "0")
    assert code == 2 and out.count("\n") == 1 and "unknown analysis 'nope'" in out and "weights" in out
    with pytest.raises(UsageError, match="has no parameter 'scal'; its parameters: scale"):
        analyze(run_path, ["test_echo"], params={"test_echo": {"scal": 2}}, workers=0)


def test_analyze_help_lists_the_registered_analyses():
    """`wb analyze --help` lists every registered analysis (a plugin's too) with its description, one line each."""
    from workbench.analysis import registry

    code, out = wb("analyze", "--help")
    lines = [line.strip() for line in out.splitlines()]
    assert code == 0 and "test_echo     the sum of lm_head [times scale]" in lines  # as written, not rich markup
    for name, cls in registry().items():
        assert any(line.split()[:3] == [name, *cls.description.split()[:2]] for line in lines), name


def test_step_choice():
    have = [0, 1, 2, 4, 1000, 2000, 3000]
    assert select_steps(have, "0:3000:1000") == [0, 1000, 2000]
    assert select_steps(have, "1000:") == [1000, 2000, 3000]
    assert select_steps(have, ":3") == [0, 1, 2]
    assert select_steps(have, "::2") == [0, 2, 4, 1000, 2000, 3000]
    assert select_steps(have, "2000,0") == [0, 2000]
    assert select_steps(have, slice(1, 5, 3)) == [1, 4]
    assert select_steps(have, [4, 4]) == [4]
    assert select_steps(have, None) == have
    with pytest.raises(StepNotFound, match=r"step 1500 has no checkpoint in this run \(nearest: 4, 1000, 2000, 3000\)"):
        select_steps(have, "0,1500")
    with pytest.raises(UsageError, match="no checkpoint of the run falls on steps 5000:6000"):
        select_steps(have, "5000:6000")
    for bad in ("1:2:3:4", "a:b", "0:10:0", "-5:", "x"):
        with pytest.raises(UsageError, match="--steps"):
            select_steps(have, bad)


def test_steps_not_in_the_run_name_the_nearest(run_path):
    with pytest.raises(StepNotFound, match=r"nearest: 0, 10, 20, 30"):
        analyze(run_path, ["weights"], steps=[15], workers=0)
    code, out = wb("analyze", run_path, "--steps", "0,25", "--workers", "0")
    assert code == 1 and out.strip() == "error: step 25 has no checkpoint in this run (nearest: 10, 20, 30)"
    code, out = wb("analyze", run_path, "--steps", "1:x")
    assert code == 2 and out.startswith("error: --steps '1:x'")


def test_forward_analysis_needs_a_tokenizer_and_an_evaluation_set(run_path, tmp_path):
    code, out = wb("analyze", run_path, "--only", "test_tokens", "--workers", "0")
    assert code == 1 and out.count("\n") == 1  # data the run lacks: exit 1
    assert "test_tokens needs a forward pass, but" in out and "no tokenizer and no evaluation set" in out
    assert "--tokenizer DIR" in out and "--eval-data FILE" in out
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"text": "the cat sat", "domain": "en"}) + "\n")
    with pytest.raises(MissingData, match=r"has no tokenizer \(an imported run\?\): store one with"):
        analyze(run_path, ["test_tokens"], eval_data=data, workers=0)
    with pytest.raises(UsageError, match="evaluation set .*missing.txt not found"):
        analyze(run_path, ["test_tokens"], eval_data=tmp_path / "missing.txt", workers=0)
    assert analyze(run_path, ["weights"], steps=[0], workers=0, progress=False) == {"weights": [0]}  # weights need neither


def test_all_analyses_skip_the_forward_ones_a_run_cannot_run(run_path, caplog):
    unregister(Broken.name)
    unregister(Intruder.name)
    with caplog.at_level("WARNING", logger="workbench.analysis.plan"):
        done = analyze(run_path, steps=[0], workers=0, progress=False)
    assert done == {"test_echo": [0], "weights": [0]}
    forward = "activations, evaluation, lens, loss, memorization, probes, similarity, test_tokens"  # probes: a plugin's
    assert f"skipping {forward}: {forward} need a forward pass" in caplog.text


def test_an_evaluation_set_too_short_to_predict_a_token_is_refused(tmp_path, hf_state_dicts, tiny_config):
    path = tmp_path / "run"
    writer = workbench.create(path, model_config=tiny_config.to_dict(), tokenizer=tiny_tokenizer())
    writer.write_checkpoint(0, hf_state_dicts((0,))[0])
    data = tmp_path / "one.txt"
    data.write_text("cat\n")
    with pytest.raises(UsageError, match=r"one.txt hold 1 token\(s\) .* needs at least 2"):
        analyze(path, ["test_tokens"], workers=0, eval_data=data)
    assert "results" not in workbench.open(path).root  # nothing written


def test_forward_analysis_gets_the_eval_set_from_a_file_or_the_held_out_split(new_run, hf_state_dicts, tmp_path, tiny_config):
    sds = hf_state_dicts((0, 10))
    path = tmp_path / "with-tokenizer"
    writer = workbench.create(path, model_config=tiny_config.to_dict(), tokenizer=tiny_tokenizer())
    for step, sd in sds.items():
        writer.write_checkpoint(step, sd)
    with pytest.raises(MissingData, match=r"has no evaluation set \(an imported run\?\): give one with `--eval-data FILE`"):
        analyze(path, ["test_tokens"], workers=0)
    data = tmp_path / "eval.txt"
    data.write_text("the cat sat\n\nle chat\nthe cat\n")
    code, out = wb("analyze", path, "--only", "test_tokens", "--eval-data", data, "--workers", "0")
    assert code == 0, out
    ds = workbench.open(path).results("test_tokens")
    np.testing.assert_array_equal(ds["tokens"].values, [[7], [7]])  # one domain "all", 3 + 2 + 2 tokens
    assert ds.attrs["analysis"]["eval_set"]
    # Another evaluation set: the stored steps are stale. Recomputing some of them would mix two evaluation sets
    # in one group (refused); analysing every step recomputes them all, no flag needed.
    writer.append({"data/documents": {"document_id": [0, 1, 2], "text": ["the cat", "le chat sat", "the"],
                                      "domain": ["en", "fr", "en"], "split": ["heldout", "heldout", "train"]}}, "corpus")
    with pytest.raises(ResultsMismatch, match="step 0, not among the steps asked for, was computed with another eval_set"):
        analyze(path, ["test_tokens"], steps=[10], workers=0)
    assert analyze(path, ["test_tokens"], workers=0, progress=False) == {"test_tokens": [0, 10]}
    ds = workbench.open(path).results("test_tokens")
    assert ds["domain"].values.tolist() == ["en", "fr"]
    np.testing.assert_array_equal(ds["tokens"].values, [[2, 3], [2, 3]])


def test_a_rerun_computes_only_what_is_missing(run_path):
    run = workbench.open(run_path)
    assert run.analyze(["test_echo"], steps="0:30:20", workers=0, progress=False) == {"test_echo": [0, 20]}
    assert run.analyze(["test_echo"], workers=0, progress=False) == {"test_echo": [10, 30]}
    assert run.analyze(["test_echo"], workers=0, progress=False) == {"test_echo": []}
    ds = run.results("test_echo")
    assert ds["step"].values.tolist() == list(STEPS)  # sorted, though stored as 0, 20, 10, 30
    sums = [float(run.checkpoint(s).state_dict()["lm_head.weight"].double().sum()) for s in STEPS]
    np.testing.assert_allclose(ds["total"].values, sums, rtol=1e-12)
    with pytest.raises(ResultsMismatch, match=r"parameters \{'scale': 1.0\}, not \{'scale': 2.0\}; pass --recompute"):
        run.analyze(["test_echo"], params={"test_echo": {"scale": 2.0}}, workers=0)
    # Recomputing some steps with other parameters would mix two parameter sets in one group: refused, nothing lost.
    with pytest.raises(ResultsMismatch, match=r"recomputing steps 10 with parameters \{'scale': 2.0\} would mix them "
                                              r"with steps 0, 20, 30 computed with \{'scale': 1.0\}"):
        run.analyze(["test_echo"], steps=[10], params={"test_echo": {"scale": 2.0}}, workers=0, recompute=True)
    assert run.results("test_echo")["step"].values.tolist() == list(STEPS)
    assert run.analyze(["test_echo"], params={"test_echo": {"scale": 2.0}}, workers=0, recompute=True,
                       progress=False) == {"test_echo": list(STEPS)}
    ds = run.results("test_echo")
    assert ds["step"].values.tolist() == list(STEPS) and ds.attrs["analysis"]["params"] == {"scale": 2.0}
    np.testing.assert_allclose(ds["total"].values, [2 * s for s in sums], rtol=1e-12)


def test_results_are_committed_as_they_arrive(run_path):
    analyze(run_path, ["test_echo", "weights"], workers=0, progress=False, commit_every=3)
    commits = result_commits(run_path)[::-1]  # oldest first
    pairs = [(name, s) for c in commits for name, steps in c.items() for s in steps]
    assert sorted(pairs) == sorted((n, s) for n in ("test_echo", "weights") for s in STEPS)
    assert all(len(c) == 1 for c in commits)  # one analysis per commit
    assert len(commits) == 6  # 8 results flushed after the 3rd, 6th and 8th: each flush one commit per analysis
    code, out = wb("results", run_path)
    assert code == 0 and "test_echo" in out and "weights" in out and "4 step(s): 0, 10, 20, 30" in out


def test_a_bad_result_fails_its_task_and_nothing_of_it_is_committed(run_path):
    with pytest.raises(AnalysisFailed, match=r"1 of 4 task\(s\) failed: test_broken at step\(s\) 20: ValueError: .*'step'"):
        analyze(run_path, ["test_broken"], workers=0, progress=False)
    assert workbench.open(run_path).results("test_broken")["step"].values.tolist() == [0, 10, 30]


def test_a_checkpoint_committed_during_the_analysis_survives(run_path, hf_state_dicts):
    Intruder.state_dict = hf_state_dicts((40,))[40]
    analyze(run_path, ["test_intruder"], workers=0, progress=False, commit_every=1)
    run = workbench.open(run_path)
    assert run.steps == [*STEPS, 40]
    assert run.results("test_intruder")["step"].values.tolist() == list(STEPS)  # the steps it was started on


def test_results_cli_summaries(run_path):
    analyze(run_path, ["weights"], workers=0, progress=False)
    code, out = wb("results", run_path, "weights")
    assert code == 0 and "spectral_norm" in out and "dist_to_prev" in out and len(out.splitlines()) == 2 + len(STEPS)
    code, out = wb("results", run_path, "weights", "--step", "20")
    assert code == 0 and "model.layers.2.mlp.up_proj.weight" in out and "input_layernorm" not in out
    code, out = wb("results", run_path, "weights", "--step", "25")
    assert code == 1 and "nearest: 10, 20, 30" in out
    code, out = wb("results", run_path, "test_echo")
    assert code == 1 and "no results of 'test_echo'" in out and "--only test_echo" in out  # missing data: exit 1


def test_register_checks_its_input():
    class NoKind(Analysis):
        name = "test_nokind"

    with pytest.raises(ValueError, match="kind must be one of"):
        register(NoKind)

    class BadName(Analysis):
        name = "Bad Name"
        kind = "weights"

    with pytest.raises(ValueError, match="lower-case identifier"):
        register(BadName)

    class Clash(Analysis):
        name = "weights"
        kind = "weights"

    with pytest.raises(ValueError, match="already registered"):
        register(Clash)


def test_the_store_does_not_import_the_analysis_layer():
    code = ("import sys, workbench; r = workbench.Run; import workbench.store.run, workbench.store.verify; "
            "assert 'workbench.analysis' not in sys.modules and 'distributed' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_corrupt_chunk_fails_only_the_steps_that_read_it(new_run, hf_state_dicts):
    from tests.conftest import chunk_file

    sds = hf_state_dicts((0, 10))
    path, writer = new_run()
    writer.write_checkpoint(0, sds[0])
    before = set((path / "chunks").iterdir())
    writer.write_checkpoint(10, sds[10])
    chunk = chunk_file(set((path / "chunks").iterdir()) - before, sds[10]["model.layers.1.self_attn.q_proj.weight"])
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x5A
    chunk.write_bytes(bytes(data))
    with pytest.raises(AnalysisFailed, match=r"weights at step\(s\) 10: CorruptData: corrupt data in "
                                             r"params/model.layers.self_attn.q_proj.weight at step 10"):
        analyze(path, ["weights"], workers=0, progress=False)
    assert workbench.open(path).results("weights")["step"].values.tolist() == [0]


def test_recomputing_some_steps_keeps_the_others_when_computed_alike(run_path):
    run = workbench.open(run_path)
    run.analyze(["test_echo"], workers=0, progress=False)
    before = run.results("test_echo").load()
    assert run.analyze(["test_echo"], steps=[10, 20], workers=0, recompute=True, progress=False) == {"test_echo": [10, 20]}
    xr.testing.assert_identical(run.results("test_echo").load(), before)  # every step kept, the same numbers
