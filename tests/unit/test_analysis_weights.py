"""The `weights` analysis: every statistic against a direct numpy computation on the stored tensors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import xarray as xr

import workbench
from workbench.analysis import analyze
from workbench.analyses.weights import STATISTICS, effective_rank, powerlaw_fit
from workbench.store.tensors import TensorGroup
from workbench.store.verify import checkpoint_distances

STEPS = (0, 10, 20)


def reference_alpha(eigs: np.ndarray, min_tail: int) -> tuple[float, float, float, int]:
    """Clauset et al.'s fit written out plainly: a loop over candidate xmins and over the tail."""
    lam = np.sort(eigs[eigs > 0])
    best = (np.inf, np.nan, np.nan, 0)
    for k in range(len(lam)):
        if k and lam[k] == lam[k - 1]:
            continue
        tail = lam[k:]
        n = len(tail)
        if n < min_tail:
            break
        s = np.sum(np.log(tail / lam[k]))
        if s <= 0:
            continue
        alpha = 1 + n / s
        d = 0.0
        for j, x in enumerate(tail):
            p = 1 - (x / lam[k]) ** (1 - alpha)
            d = max(d, p - j / n, (j + 1) / n - p)
        if d < best[0]:
            best = (d, alpha, lam[k], n)
    return best[1], best[2], best[0], best[3]


def reference(w: np.ndarray, w0: np.ndarray, wp: np.ndarray | None, min_tail: int = 10) -> dict[str, float]:
    w, w0 = w.astype(np.float64), w0.astype(np.float64)
    sv = np.linalg.svd(w, compute_uv=False)
    p = sv / sv.sum()
    out = {
        "frobenius_norm": np.linalg.norm(w),
        "spectral_norm": sv[0],
        "stable_rank": np.linalg.norm(w) ** 2 / sv[0] ** 2,
        "effective_rank": np.exp(-np.sum(p * np.log(p))),
        "dist_to_init": np.linalg.norm(w - w0),
        "cos_to_init": np.dot(w.ravel(), w0.ravel()) / (np.linalg.norm(w) * np.linalg.norm(w0)),
        "dist_to_prev": np.nan if wp is None else np.linalg.norm(w - wp),
        "update_ratio": np.nan if wp is None else np.linalg.norm(w - wp) / np.linalg.norm(wp.astype(np.float64)),
    }
    tol = sv[0] * max(w.shape) * np.finfo(np.float32).eps
    out["alpha"], out["alpha_xmin"], out["alpha_ks"], out["alpha_tail"] = reference_alpha(sv[sv > tol] ** 2, min_tail)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, hf_state_dicts, tiny_config):
    """{dtype name: run path} with STEPS written from HF state dicts, weights analysed in-process."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        path = tmp_path_factory.mktemp("weights") / "run"
        writer = workbench.create(path, model_config=tiny_config.to_dict())
        for step, sd in hf_state_dicts(STEPS, dtype).items():
            writer.write_checkpoint(step, sd)
        assert analyze(path, ["weights"], workers=0, progress=False) == {"weights": list(STEPS)}
        out[str(dtype).removeprefix("torch.")] = path
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_statistic_matches_numpy_on_the_stored_tensors(runs, dtype):
    run = workbench.open(runs[dtype])
    ds = run.results("weights").load()
    sds = {s: {k: v.float().numpy() for k, v in run.checkpoint(s).state_dict().items()} for s in STEPS}
    matrices = sorted(k for k, v in sds[0].items() if v.ndim == 2)
    assert sorted(ds["param"].values.tolist()) == matrices  # 2-D only: no norms
    assert list(ds["step"].values) == list(STEPS)
    np.testing.assert_array_equal(ds["prev_step"].values, [-1, 0, 10])
    np.testing.assert_array_equal(ds["init_step"].values, [0, 0, 0])
    fit_disagreements = 0
    for i, step in enumerate(STEPS):
        prev = STEPS[i - 1] if i else None
        for name in matrices:
            want = reference(sds[step][name], sds[0][name], None if prev is None else sds[prev][name])
            got = ds.sel(step=step, param=name)
            for stat in ("frobenius_norm", "dist_to_init", "dist_to_prev", "update_ratio"):
                np.testing.assert_allclose(got[stat].item(), want[stat], rtol=1e-7, err_msg=f"{stat} {name}")
            np.testing.assert_allclose(got["cos_to_init"].item(), want["cos_to_init"], rtol=0, atol=1e-7, err_msg=name)
            for stat in ("spectral_norm", "stable_rank", "effective_rank"):  # float32 SVD
                np.testing.assert_allclose(got[stat].item(), want[stat], rtol=2e-5, err_msg=f"{stat} {name}")
            if got["alpha_tail"].item() != want["alpha_tail"]:
                fit_disagreements += 1  # float32 vs float64 eigenvalues may pick a neighbouring xmin on near ties
                continue
            for stat in ("alpha", "alpha_xmin", "alpha_ks"):
                np.testing.assert_allclose(got[stat].item(), want[stat], rtol=1e-3, err_msg=f"{stat} {name}")
    assert fit_disagreements <= len(matrices) * len(STEPS) // 10
    assert np.isnan(ds["dist_to_prev"].sel(step=0)).all() and np.isnan(ds["update_ratio"].sel(step=0)).all()
    np.testing.assert_allclose(ds["cos_to_init"].sel(step=0), 1.0, rtol=1e-7)
    assert (ds["dist_to_init"].sel(step=0) == 0).all()
    for v in STATISTICS:
        assert ds[v].attrs["description"] and ds[v].attrs["units"] == "1"


def test_coordinates_name_layers_and_shapes(runs):
    ds = workbench.open(runs["float32"]).results("weights")
    q = ds.sel(param="model.layers.2.self_attn.k_proj.weight")
    assert int(q["layer"]) == 2 and str(q["template"].values) == "model.layers.{layer}.self_attn.k_proj.weight"
    assert (int(q["rows"]), int(q["cols"])) == (16, 32)  # 2 kv heads x head_dim 8, hidden 32
    assert int(ds.sel(param="lm_head.weight")["layer"]) == -1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_checkpoint_larger_than_the_cache_is_read_one_tensor_at_a_time(runs, dtype, tmp_path, monkeypatch):
    """A worker whose cache cannot hold a checkpoint (a 172B model's is 345 GB) reads one matrix of one layer
    at a time, and computes the numbers it computes from a cached checkpoint; one that can holds it whole."""
    path = tmp_path / "run"
    shutil.copytree(runs[dtype], path)
    layers_read = []
    read_array = TensorGroup.read_array

    async def counting(self, name, arr, step, idx, layers=slice(None)):
        out = await read_array(self, name, arr, step, idx, layers)
        if "layer" in arr.metadata.dimension_names:
            layers_read.append(out.shape[0])
        return out

    monkeypatch.setattr(TensorGroup, "read_array", counting)
    monkeypatch.setenv("WORKBENCH_ANALYSIS_CACHE_MB", "0")
    analyze(path, ["weights"], workers=0, progress=False, recompute=True)
    assert layers_read and set(layers_read) == {1}
    cached = workbench.open(runs[dtype]).results("weights").load()
    xr.testing.assert_equal(workbench.open(path).results("weights").load(), cached)

    layers_read.clear()
    monkeypatch.setenv("WORKBENCH_ANALYSIS_CACHE_MB", "64")
    analyze(path, ["weights"], workers=0, progress=False, recompute=True)
    assert set(layers_read) == {workbench.open(path).model_config["num_hidden_layers"]}
    xr.testing.assert_equal(workbench.open(path).results("weights").load(), cached)


def test_powerlaw_fit_equals_the_plain_loop_and_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    for eigs in (rng.random(300) ** 2, np.linalg.svd(rng.normal(size=(200, 80)), compute_uv=False) ** 2):
        got, want = powerlaw_fit(eigs, 10), reference_alpha(eigs, 10)
        np.testing.assert_allclose(got[:3], want[:3], rtol=1e-12)
        assert got[3] == want[3]
    # A body below xmin = 1 and a Pareto tail of exponent 2.5 above it: the fit finds both.
    body = rng.uniform(0.01, 1.0, 1000)
    tail = (1 - rng.random(3000)) ** (-1 / 1.5)
    alpha, xmin, ks, n = powerlaw_fit(np.concatenate([body, tail]), 10)
    assert abs(alpha - 2.5) < 0.1 and 0.7 < xmin < 1.5 and ks < 0.05 and n > 2000
    assert np.isnan(powerlaw_fit(np.ones(5), 10)[0])  # too few eigenvalues


def test_effective_rank_bounds():
    assert effective_rank(np.ones(7)) == pytest.approx(7)
    assert effective_rank(np.array([3.0, 0, 0])) == pytest.approx(1)
    assert np.isnan(effective_rank(np.zeros(3)))


def test_checkpoint_distances_are_the_numbers_of_verify(new_run, hf_state_dicts, monkeypatch):
    from workbench.store import verify as verify_module

    path, writer = new_run()
    for step, sd in hf_state_dicts((0, 10, 20, 30), torch.bfloat16).items():
        writer.write_checkpoint(step, sd)
    seen = {}

    def capture(steps, sq):
        seen.update(sq)
        return []

    monkeypatch.setattr(verify_module, "_jumps", capture)
    run = workbench.open(path)
    verify_module.verify(run, progress=False)
    ours = checkpoint_distances(run)
    assert ours.keys() == seen.keys() == {(0, 10), (10, 20), (20, 30), (0, 20), (10, 30)}
    for pair, value in seen.items():  # the same sums; rtol only for a change of summation order in verify
        assert ours[pair] == pytest.approx(value, rel=1e-12, abs=0)
