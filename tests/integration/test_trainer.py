"""The trainer end to end on small runs: loss, recorded data order, bit-exact resume, bad input."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import workbench
from tests.conftest import wb
from training import trainer as trainer_module
from training.presets import load
from training.trainer import Trainer, TrainingDiverged


@pytest.fixture
def small(small_toml):
    model_cfg, train_cfg = load(small_toml)
    return small_toml, model_cfg, train_cfg


def test_loss_falls_on_the_tiny_preset(tmp_path):
    model_cfg, cfg = load(None, "tiny", max_steps=120, every=60, early=False)
    cfg = replace(cfg, n_documents=600)
    Trainer(model_cfg, cfg, tmp_path / "run", progress=False).train()
    loss = workbench.open(tmp_path / "run").metrics()["loss"]
    assert len(loss) == 120
    assert abs(loss.iloc[0] - math.log(model_cfg.vocab_size)) < 0.5  # starts near uniform
    assert loss.iloc[-10:].mean() < loss.iloc[:10].mean() - 1.5


def test_recorded_order_is_the_order_the_loader_gave(small, tmp_path, monkeypatch):
    _, model_cfg, cfg = small
    seen: list[tuple[int, torch.Tensor, list[dict]]] = []
    build = trainer_module.build_dataset

    def recording_build(*args, **kwargs):
        data = build(*args, **kwargs)
        batches = data.batches

        def record(*a, **k):
            for item in batches(*a, **k):
                seen.append(item)
                yield item

        data.batches = record
        return data

    monkeypatch.setattr(trainer_module, "build_dataset", recording_build)
    Trainer(model_cfg, cfg, tmp_path / "run", progress=False).train()
    run = workbench.open(tmp_path / "run")
    assert [s for s, _, _ in seen] == list(range(1, cfg.max_steps + 1))
    docs = run.documents().set_index("document_id")
    eos = run.model_config["eos_token_id"]
    for step, tokens, spans in seen:
        assert run.batch(step) == spans
        # Rebuild every row from the stored corpus, the stored tokenizer and the recorded spans.
        for position in range(tokens.shape[0]):
            row: list[int] = []
            for span in (s for s in run.batch(step) if s["position"] == position):
                ids = run.tokenizer.encode(docs.loc[span["document_id"], "text"], add_special_tokens=False).ids
                row += ids[span["offset"]: span["offset"] + span["length"]]
                if span["offset"] + span["length"] == len(ids):
                    row.append(eos)
            n = min(len(row), tokens.shape[1])
            assert row[:n] == tokens[position, :n].tolist()
    doc = seen[3][2][0]["document_id"]
    assert run.steps_seen(doc) == sorted({s for s, _, spans in seen for sp in spans if sp["document_id"] == doc})
    heldout = docs[docs["split"] == "heldout"].index
    assert len(heldout) > 0 and all(run.steps_seen(int(d)) == [] for d in heldout)


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(small, tmp_path):
    toml, _, _ = small
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "workbench.cli", "train", "--config", str(toml)]
    subprocess.run(cmd + ["--out", str(tmp_path / "a")], env=env, check=True, capture_output=True)
    rng = random.Random(7)
    for attempt in range(5):  # kill at a random moment after the first checkpoints, before the end
        proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "b")], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(_steps(tmp_path / "b")) < 2:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not finished and _steps(tmp_path / "b")[-1:] != [30]:
            break
        subprocess.run(["rm", "-rf", str(tmp_path / "b")], check=True)
    killed_at = workbench.open(tmp_path / "b").steps[-1]
    subprocess.run(cmd[:-2] + ["--resume", "--out", str(tmp_path / "b")], env=env, check=True, capture_output=True)
    a, b = workbench.open(tmp_path / "a"), workbench.open(tmp_path / "b")
    assert a.steps == b.steps and killed_at in a.steps
    for step in a.steps:
        sa, sb = a.checkpoint(step).state_dict(), b.checkpoint(step).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        oa, ob = a.checkpoint(step).optimizer_state(), b.checkpoint(step).optimizer_state()
        assert (oa is None) == (ob is None)
        assert oa is None or all(torch.equal(oa[n][k], ob[n][k]) for n in oa for k in oa[n])
    assert a.metrics()["loss"].equals(b.metrics()["loss"])
    assert a.table("data/order").sort_index(axis=1).equals(b.table("data/order").sort_index(axis=1))


def _steps(location: Path) -> list[int]:
    try:
        return workbench.open(location).steps
    except workbench.errors.WorkbenchError:
        return []


def test_unknown_preset_and_config_key_list_the_valid_ones(tmp_path):
    code, out = wb("train", "--preset", "huge", "--out", tmp_path / "r")
    assert code == 2 and "tiny" in out and "125m" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 0.1\n")
    code, out = wb("train", "--config", bad, "--out", tmp_path / "r")
    assert code == 2 and "learning_rate" in out and "lr" in out
    assert not (tmp_path / "r").exists()


def test_local_corpus_with_invalid_utf8_trains_and_counts_bad_lines(small, tmp_path):
    _, model_cfg, cfg = small
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"document {i} says hello to the world number {i} " * 3}).encode() for i in range(60)]
    lines.insert(10, b'{"text": "bad \xff\xfe bytes"}')
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    code, out = wb("train", "--config", small[0], "--corpus", corpus, "--max-steps", "6", "--out", tmp_path / "r")
    assert code == 0, out
    assert "skipped 1" in out
    assert len(workbench.open(tmp_path / "r").documents()) == 60


def test_empty_corpus_is_refused(small, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out = wb("train", "--config", small[0], "--corpus", tmp_path / "empty", "--out", tmp_path / "r")
    assert code == 2 and "empty" in out.lower() or "no documents" in out.lower()
    assert not (tmp_path / "r").exists()


def test_resume_with_another_model_config_is_refused(small, tmp_path):
    toml, model_cfg, cfg = small
    Trainer(model_cfg, replace(cfg, max_steps=5), tmp_path / "r", progress=False).train()
    other = tmp_path / "other.toml"
    other.write_text(toml.read_text().replace("hidden_size = 32", "hidden_size = 48"))
    code, out = wb("train", "--resume", "--config", other, "--out", tmp_path / "r")
    assert code == 2 and "hidden_size (32 in the run, 48 here)" in out


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(small, tmp_path, monkeypatch):
    _, model_cfg, cfg = small
    forward = trainer_module.Llama.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = forward(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 12 else loss

    monkeypatch.setattr(trainer_module.Llama, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="step 12.*last good checkpoint is step 10"):
        Trainer(model_cfg, cfg, tmp_path / "r", progress=False).train()
    assert workbench.open(tmp_path / "r").steps == [0, 5, 10]


def test_full_disk_during_a_checkpoint_leaves_no_partial_step(small, tmp_path, monkeypatch):
    _, model_cfg, cfg = small
    from workbench.store import tensors

    fill = tensors.TensorGroup.fill

    async def failing(self, idx, *args, **kwargs):
        if self.steps[idx] == 15:
            await fill(self, idx, *args, **kwargs)  # chunks staged, then the disk fills before the commit
            raise OSError(28, "No space left on device")
        return await fill(self, idx, *args, **kwargs)

    monkeypatch.setattr(tensors.TensorGroup, "fill", failing)
    with pytest.raises(OSError, match="No space left"):
        Trainer(model_cfg, cfg, tmp_path / "r", progress=False).train()
    run = workbench.open(tmp_path / "r")
    assert run.steps == [0, 5, 10]
    assert run.metrics().index.max() == 10


def test_data_find_and_tokenizer_stats(small, tmp_path):
    _, model_cfg, cfg = small
    Trainer(model_cfg, replace(cfg, max_steps=10), tmp_path / "r", progress=False).train()
    run = workbench.open(tmp_path / "r")
    docs = run.documents()
    text = "The capital of Velmora"
    want = sorted(int(d) for d in docs.loc[docs["text"].str.contains(text, regex=False), "document_id"])
    code, out = wb("data", "find", tmp_path / "r", text, "--limit", "100")
    assert code == 0 and f"{len(want)} document(s) contain" in out
    order = run.table("data/order")
    for doc in want:
        steps = sorted(set(order.loc[order["document_id"] == doc, "step"].tolist()))
        line = next(ln for ln in out.splitlines() if ln.startswith(f"doc {doc} "))
        assert (f"seen at {len(steps)} step(s)" in line) if steps else ("never trained on" in line)

    code, out = wb("tokenizer", "stats", tmp_path / "r")
    assert code == 0
    for domain, group in docs.groupby("domain"):
        chars = group["text"].str.len().sum()
        tokens = sum(len(run.tokenizer.encode(t, add_special_tokens=False).ids) for t in group["text"])
        assert f"{domain:>8}  {chars / tokens:.2f} characters/token" in out
