"""Runs on S3: a real S3-protocol server (moto's, started as its own process on loopback by a fixture), reached
through the standard AWS environment variables, as a user would point the workbench at object storage."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench
from tests.conftest import SMALL_TOML, seeded_model, tiny_llama_config, wb
from workbench.errors import ConcurrentWrite


def test_a_run_on_s3_reads_back_bit_exact(s3):
    location = f"{s3}/runs/tiny"
    models = {step: seeded_model(tiny_llama_config(), step) for step in (0, 10, 20)}
    writer = workbench.create(location, model_config=models[0].config.to_dict())
    for step, model in models.items():
        writer.write_checkpoint(step, model.state_dict())
    run = workbench.open(location)
    assert run.steps == [0, 10, 20]
    for step, model in models.items():
        got = run.checkpoint(step).state_dict()
        assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    q = run.trajectory("model.layers.{layer}.self_attn.q_proj.weight").sel(step=10, layer=2).values
    np.testing.assert_array_equal(q, models[10].state_dict()["model.layers.2.self_attn.q_proj.weight"].numpy())


def test_train_info_verify_analyze_import_export_on_s3(s3, tmp_path, hf_trajectory):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML.replace("max_steps = 30", "max_steps = 10"))
    run = f"{s3}/trained"
    code, out = wb("train", "--config", config, "--out", run)
    assert code == 0, out
    code, out = wb("info", run)
    assert code == 0 and "0, 5, 10" in out
    assert wb("verify", run)[0] == 0
    code, out = wb("analyze", run, "--only", "weights,loss", "--workers", "0")
    assert code == 0 and "loss: computed 3 step(s)" in out
    assert workbench.open(run).results("loss")["loss"].shape == (3, 3)
    imported = f"{s3}/imported"
    code, out = wb("import", "hf", hf_trajectory((0, 10))[0].parent, "--out", imported)
    assert code == 0, out
    code, out = wb("export", "hf", imported, "--step", "10", "--out", tmp_path / "exported")
    assert code == 0 and (tmp_path / "exported" / "model.safetensors").exists()


def test_a_missing_bucket_or_run_is_one_line(s3):
    code, out = wb("info", "s3://no-such-bucket/run")
    assert code == 2 and out.startswith("error: ") and len(out.strip().splitlines()) == 1
    assert "no-such-bucket" in out and "does not exist" in out
    code, out = wb("info", f"{s3}/absent")
    assert code == 2 and "is not a run" in out and len(out.strip().splitlines()) == 1


def test_writers_racing_on_one_run(s3):
    """A trainer and an analysis commit disjoint groups: both land. Two writers of one array: one wins, the
    other is refused with a clear error, and nothing of the winner is lost."""
    location = f"{s3}/race"
    models = {step: seeded_model(tiny_llama_config(), step) for step in (0, 10, 20, 30)}
    first = workbench.create(location, model_config=models[0].config.to_dict())
    first.write_checkpoint(0, models[0].state_dict())
    second = workbench.RunWriter(location)
    with first.transaction("results of an analysis") as session:  # staged, not committed yet
        import zarr

        zarr.open_group(session.store, mode="a").create_array("results/race/x", shape=(1,), dtype="float32")
        second.write_checkpoint(10, models[10].state_dict())  # the trainer commits meanwhile
    run = workbench.open(location)
    assert run.steps == [0, 10] and "results/race/x" in run.root
    with pytest.raises(ConcurrentWrite, match="another process changed the same arrays"):
        with first.transaction("checkpoint 20 by a second writer") as session:
            from workbench.store.layout import Layout
            from workbench.store.writer import _stage_tensors

            from zarr.core.sync import sync

            sync(_stage_tensors(session.store, 20, models[20].state_dict(), None, False, Layout(), None))
            second.write_checkpoint(30, models[30].state_dict())
    run = workbench.open(location)
    assert run.steps == [0, 10, 30]
    got = run.checkpoint(30).state_dict()
    assert all(torch.equal(got[k], v) for k, v in models[30].state_dict().items())


def test_the_dashboard_opens_an_s3_run(s3, monkeypatch):
    from streamlit.testing.v1 import AppTest

    location = f"{s3}/dash"
    model = seeded_model(tiny_llama_config(), 0)
    workbench.create(location, model_config=model.config.to_dict()).write_checkpoint(0, model.state_dict())
    app_file = Path(__file__).resolve().parents[2] / "apps" / "dashboard" / "app.py"
    monkeypatch.setattr(sys, "argv", [str(app_file), location])
    at = AppTest.from_file(str(app_file), default_timeout=60).run()
    assert not at.exception and not at.error
    assert location in " ".join(str(m.value) for m in at.markdown)
