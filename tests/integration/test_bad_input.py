"""Bad input to every command: one line naming the value and what to give instead, exit 2 for usage and 1
for data, no traceback, nothing written. Table-driven: each row is a command line, the files it needs, the
exit code and words the one line must hold."""

from __future__ import annotations

import pytest

import workbench
from tests.conftest import SMALL_TOML, wb


def toml_with(old: str, new: str) -> str:
    """A [model]/[train] file for `wb train`: the small test preset with one value replaced."""
    assert old in SMALL_TOML
    return SMALL_TOML.replace(old, new)


# (id, argv with {tmp} / {run} / {file} / {config} / {bad} placeholders, config text or None, exit code, words);
# {bad} is a JSON Lines file whose line 2 is not valid UTF-8
BAD_UTF8 = ['{bad}:2:', "not valid UTF-8"]
CASES = [
    ("kv-heads-not-dividing-heads", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("num_key_value_heads = 2", "num_key_value_heads = 3"), 2, ["num_key_value_heads", "3", "4"]),
    ("hidden-size-not-a-number", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("hidden_size = 32", 'hidden_size = "big"'), 2, ["hidden_size", "'big'", "integer"]),
    ("hidden-size-zero", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("hidden_size = 32", "hidden_size = 0"), 2, ["hidden_size", "0", "positive"]),
    ("odd-head-dim", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("hidden_size = 32", "hidden_size = 36"), 2, ["head_dim", "9", "even"]),
    ("vocab-smaller-than-tokenizer", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("vocab_size = 384", "vocab_size = 100"), 2, ["vocab_size", "100", "tokenizer"]),
    ("batch-size-zero", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("batch_size = 4", "batch_size = 0"), 2, ["batch_size", "0", "positive"]),
    ("negative-lr", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("warmup_steps = 5", "warmup_steps = 5\nlr = -1.0"), 2, ["lr", "-1.0", "positive"]),
    ("heldout-fraction-above-one", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("warmup_steps = 5", "warmup_steps = 5\nheldout_fraction = 1.5"), 2, ["heldout_fraction", "1.5"]),
    ("lr-as-text", ["train", "--config", "{config}", "--out", "{tmp}/new"],
     toml_with("warmup_steps = 5", 'warmup_steps = 5\nlr = "fast"'), 2, ["lr", "'fast'", "number"]),
    ("every-zero", ["train", "--every", "0", "--out", "{tmp}/new"], None, 2, ["--every", "0", "positive"]),
    ("max-steps-negative", ["train", "--max-steps", "-5", "--out", "{tmp}/new"], None, 2,
     ["--max-steps", "-5"]),
    ("train-device-unknown", ["train", "--device", "tpu", "--out", "{tmp}/new"], None, 2, ["tpu", "cpu", "cuda"]),
    ("train-out-is-a-file", ["train", "--out", "{file}"], None, 2, ["file", "folder"]),
    ("info-on-a-file", ["info", "{file}"], None, 2, ["{file}", "file", "run"]),
    ("verify-on-a-file", ["verify", "{file}"], None, 2, ["{file}", "file", "run"]),
    ("tokenizer-stats-on-a-file", ["tokenizer", "stats", "{file}"], None, 2, ["{file}", "file", "run"]),
    ("results-on-a-file", ["results", "{file}"], None, 2, ["{file}", "file", "run"]),
    ("export-onto-a-file", ["export", "hf", "{run}", "--step", "0", "--out", "{file}"], None, 2,
     ["{file}", "file", "folder"]),
    ("export-negative-step", ["export", "hf", "{run}", "--step", "-1", "--out", "{tmp}/exported"], None, 2,
     ["--step", "-1"]),
    ("analyze-scheduler-not-an-address", ["analyze", "{run}", "--scheduler", "notaurl"], None, 2,
     ["notaurl", "tcp://"]),
    ("analyze-commit-every-zero", ["analyze", "{run}", "--commit-every", "0", "--workers", "0"], None, 2,
     ["--commit-every", "0"]),
    ("analyze-eval-data-folder", ["analyze", "{run}", "--only", "loss", "--eval-data", "{tmp}", "--workers", "0"],
     None, 2, ["{tmp}", "file"]),
    ("data-find-limit-zero", ["data", "find", "{run}", "capital", "--limit", "0"], None, 2, ["--limit", "0"]),
    ("import-onto-a-file", ["import", "hf", "{hf}", "--out", "{file}"], None, 2, ["{file}", "file"]),
    ("import-negative-step", ["import", "hf", "{hf}", "--step", "-3", "--out", "{tmp}/new"], None, 2,
     ["--step", "-3"]),
    ("evaluate-task-file-not-utf8", ["evaluate", "{run}", "--tasks", "{bad}", "--workers", "0"], None, 2, BAD_UTF8),
    ("probe-task-file-not-utf8", ["probe", "{run}", "--tasks", "{bad}", "--workers", "0"], None, 2, BAD_UTF8),
    ("eval-data-not-utf8", ["analyze", "{run}", "--only", "loss", "--eval-data", "{bad}", "--workers", "0"], None, 2,
     BAD_UTF8),
    ("train-config-not-utf8", ["train", "--config", "{bad}", "--out", "{tmp}/new"], None, 2, BAD_UTF8),
]


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    """A run of one tiny LLaMA checkpoint without corpus or metrics (as an import makes)."""
    from tests.conftest import seeded_model, tiny_llama_config

    path = tmp_path_factory.mktemp("imported") / "run"
    model = seeded_model(tiny_llama_config(), 0)
    workbench.create(path, model_config=model.config.to_dict()).write_checkpoint(0, model.state_dict())
    return path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_the_right_exit_code(case, tmp_path, imported_run, hf_trajectory):
    _, argv, config, code, words = case
    file = tmp_path / "a-file.txt"
    file.write_text("not a run\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')  # Latin-1, not UTF-8
    names = {"tmp": tmp_path, "run": imported_run, "file": file, "config": tmp_path / "bad.toml",
             "hf": hf_trajectory((0,))[0], "bad": bad}
    if config is not None:
        names["config"].write_text(config)
    before = sorted(p.name for p in tmp_path.iterdir())
    got, out = wb(*[a.format(**names) for a in argv])
    lines = out.strip().splitlines()
    assert got == code and len(lines) == 1 and lines[0].startswith("error: "), out
    for w in words:
        assert w.format(**names) in lines[0], (w, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert file.read_text() == "not a run\n"


MISSING = [
    ("metrics", lambda run: run.metrics()),
    ("data order", lambda run: run.batch(0)),
    ("corpus", lambda run: run.documents()),
]


@pytest.mark.parametrize("what,read", MISSING, ids=[m[0] for m in MISSING])
def test_missing_data_is_one_error_class_with_exit_1(what, read, imported_run):
    from workbench.errors import MissingData

    with pytest.raises(MissingData, match=what):
        read(workbench.open(imported_run))
    assert MissingData.exit_code == 1


def test_missing_corpus_on_the_command_line_is_a_data_error(imported_run):
    code, out = wb("data", "find", imported_run, "capital")
    assert code == 1 and out.startswith("error: ") and "corpus" in out and len(out.strip().splitlines()) == 1


PYTHON = [
    ("location-not-a-path", lambda run: workbench.open(123), "123"),
    ("workers-not-an-int", lambda run: run.analyze(["weights"], workers="2"), "'2'"),
    ("workers-negative", lambda run: run.analyze(["weights"], workers=-1), "-1"),
    ("commit-every-zero", lambda run: run.analyze(["weights"], workers=0, commit_every=0), "0"),
    ("unknown-device", lambda run: run.analyze(["weights"], workers=0, device="tpu"), "'tpu'"),
    ("bad-scheduler", lambda run: run.analyze(["weights"], scheduler="localhost"), "'localhost'"),
    ("negative-step", lambda run: workbench.RunWriter(run.location).write_checkpoint(-1, {}), "-1"),
    ("unknown-parameter", lambda run: run.trajectory("model.layers.{layer}.mlp.up.weight"), "up_proj"),
]


@pytest.mark.parametrize("case", PYTHON, ids=[c[0] for c in PYTHON])
def test_bad_python_arguments_are_refused_by_name(case, imported_run):
    from workbench.errors import UsageError

    _, call, words = case
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace("[", r"\[")) as info:
        call(workbench.open(imported_run))
    assert len(str(info.value).splitlines()) == 1
