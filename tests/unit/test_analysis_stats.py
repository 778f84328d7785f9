"""Running statistics: merged partial results over random partitions equal the statistic over all data."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from workbench.analysis.stats import Count, Histogram, Max, Mean, Moments, TopK, Variance

N, F = 1000, 5


def data(seed: int = 0) -> np.ndarray:
    """[sample, feature] with different scales, offsets and a heavy-tailed column (kurtosis well above 0)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, F)) * np.array([1, 10, 0.1, 1, 3]) + np.array([0, 5, -2, 100, 0])
    x[:, 4] = rng.standard_t(5, size=N)
    return x


def partitions(n: int, seed: int) -> list[tuple[int, int]]:
    """Random contiguous pieces of 0..n, some empty, some of one sample."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, n), 12) + [1, n - 1, rng.randrange(n)])
    bounds = [0, *cuts, n]
    return list(zip(bounds, bounds[1:]))


def partial_then_merged(make, x: np.ndarray, seed: int, with_ids: bool = False, as_torch: bool = False):
    """Each piece in its own statistic (pieces updated in 1-3 batches), then merged in a random tree order."""
    rng = random.Random(seed)
    parts = []
    for a, b in partitions(len(x), seed):
        stat = make()
        mids = sorted(rng.sample(range(a, b + 1), min(2, b - a + 1)))
        for lo, hi in zip([a, *mids], [*mids, b]):
            chunk = torch.as_tensor(x[lo:hi]) if as_torch else x[lo:hi]
            if with_ids:
                stat.update(chunk, ids=np.arange(lo, hi))
            else:
                stat.update(chunk)
        parts.append(stat)
    while len(parts) > 1:
        i, j = sorted(rng.sample(range(len(parts)), 2))
        b = parts.pop(j)
        a = parts.pop(i)
        if rng.random() < 0.5:  # through state() / from_state(), as between processes
            b = type(b).from_state(b.state())
        parts.append(a.merge(b))
    return parts[0]


def central(x: np.ndarray, p: int) -> np.ndarray:
    return ((x - x.mean(0)) ** p).mean(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moments_merge_equals_all_data(seed):
    x = data(seed)
    m = partial_then_merged(Moments, x, seed, as_torch=seed == 1)
    assert m.n == N
    np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.variance().numpy(), x.var(0), rtol=1e-10)
    np.testing.assert_allclose(m.variance(ddof=1).numpy(), x.var(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(m.std().numpy(), x.std(0), rtol=1e-10)
    skew = central(x, 3) / central(x, 2) ** 1.5  # scipy.stats.skew(x), bias=True
    kurt = central(x, 4) / central(x, 2) ** 2 - 3  # scipy.stats.kurtosis(x), fisher=True, bias=True
    np.testing.assert_allclose(m.skewness().numpy(), skew, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m.kurtosis().numpy(), kurt, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m.kurtosis(excess=False).numpy(), kurt + 3, rtol=1e-8)
    assert m.kurtosis()[4] > 0.5  # the t(5) column is heavy-tailed


def test_mean_and_variance_merge_equal_all_data():
    x = data(3)
    mean = partial_then_merged(Mean, x, 3)
    var = partial_then_merged(Variance, x, 4)
    np.testing.assert_allclose(mean.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var.variance(ddof=1).numpy(), x.var(0, ddof=1), rtol=1e-10)
    assert mean.state().keys() == {"n", "mean"} and var.state().keys() == {"n", "mean", "m2"}


def test_count_merge_equals_all_data():
    x = data(5)
    c = partial_then_merged(Count, x > 0.5, 5)
    np.testing.assert_array_equal(c.counts.numpy(), (x > 0.5).sum(0))
    np.testing.assert_allclose(c.fraction.numpy(), (x > 0.5).mean(0))
    assert c.n == N


@pytest.mark.parametrize("k", [1, 7])
def test_max_merge_equals_all_data(k):
    x = data(6).reshape(N, 1, F)  # feature axes [1, F]: indices unravel into both
    m = partial_then_merged(lambda: Max(k), x, 6, with_ids=True)
    flat = x.reshape(-1)
    order = np.argsort(-np.abs(flat), kind="stable")[:k]
    np.testing.assert_array_equal(m.values.numpy(), flat[order])
    np.testing.assert_array_equal(m.samples.numpy(), order // F)
    np.testing.assert_array_equal(m.features.numpy(), order % F)
    assert m.feature_index(0) == (0, int(order[0] % F))
    assert m.n == N


@pytest.mark.parametrize("by", ["value", "abs"])
def test_topk_merge_equals_all_data(by):
    x = data(7)
    t = partial_then_merged(lambda: TopK(4, by=by), x, 7, with_ids=True)
    score = np.abs(x) if by == "abs" else x
    order = np.argsort(-score, axis=0, kind="stable")[:4]  # [k, feature]
    np.testing.assert_array_equal(t.ids.numpy(), order)
    np.testing.assert_array_equal(t.values.numpy(), np.take_along_axis(x, order, 0))


def test_topk_with_fewer_samples_than_k_pads():
    t = TopK(3)
    t.update(np.array([[1.0], [2.0]]))
    np.testing.assert_array_equal(t.ids.numpy()[:, 0], [1, 0, -1])
    assert np.isnan(t.values.numpy()[2, 0])
    t.merge(TopK.from_state(TopK(3).state()))  # merging an empty statistic changes nothing
    np.testing.assert_array_equal(t.ids.numpy()[:, 0], [1, 0, -1])


def test_histogram_merge_equals_numpy_histogram():
    x = data(8)
    x[3, 0] = np.nan
    edges = np.linspace(-3, 3, 13)
    h = partial_then_merged(lambda: Histogram(edges), x, 8)
    for f in range(F):
        col = x[:, f]
        finite = col[~np.isnan(col)]
        np.testing.assert_array_equal(h.counts.numpy()[f], np.histogram(finite, bins=edges)[0])
        assert h.underflow[f] == (finite < edges[0]).sum()
        assert h.overflow[f] == (finite > edges[-1]).sum()
        assert h.nan[f] == np.isnan(col).sum()
        assert h.counts[f].sum() + h.underflow[f] + h.overflow[f] + h.nan[f] == N


def test_histogram_last_edge_is_closed_like_numpy():
    h = Histogram([0.0, 1.0, 2.0])
    h.update(np.array([[0.0], [1.0], [2.0], [2.5], [-1e-9]]))
    np.testing.assert_array_equal(h.counts.numpy()[0], np.histogram([0.0, 1.0, 2.0], bins=[0, 1, 2])[0])
    assert (int(h.underflow[0]), int(h.overflow[0])) == (1, 1)
    with pytest.raises(ValueError, match="different edges"):
        h.merge(Histogram([0.0, 1.0, 3.0]))


def test_state_round_trip_and_type_checks():
    x = data(9)
    for stat in (Moments(), Count(), Max(3), TopK(2), Histogram([-1, 0, 1])):
        stat.update(x)
        again = type(stat).from_state(stat.state())
        for key, value in stat.state().items():
            np.testing.assert_array_equal(np.asarray(again.state()[key]), np.asarray(value))
    with pytest.raises(TypeError, match="cannot merge"):
        Mean().merge(Variance())
