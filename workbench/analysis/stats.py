"""Mergeable running statistics, as baukit's runningstats: `update(x)` with batches, `merge(other)` partial
results (from other batches, processes or Dask tasks), `state()` / `from_state()` to ship or store them.

A statistic computed over batches, or over any partition of the data merged in any order, gives the same
answer as over all data at once (up to float64 rounding; exactly for counts, histograms and top-k).

Conventions
- `x` is `[sample, *feature]`: every statistic reduces over the leading axis and keeps the feature axes,
  e.g. activations `[batch, pos, d_model]` go in as `x.reshape(-1, d_model)`.
- Input may be a torch tensor (on any device: accumulators live on the device of the first batch) or
  anything numpy accepts. Sums are accumulated in float64.
- `state()` is a dict of numpy arrays and Python numbers (no pickle needed: storable as Zarr arrays or,
  via `.tolist()`, JSON); `from_state(state)` rebuilds the statistic on the CPU.
- Statistics that remember *which* sample produced a value (`Max`, `TopK`) take `ids` (one int64 per
  sample, e.g. a global token index or a document id). Without `ids`, samples are numbered by a running
  counter of the statistic itself, which only makes sense when no partial results are merged.
- NaN is not special: it propagates into means and moments (filter before `update` if needed).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

S = TypeVar("S", bound="RunningStat")

__all__ = ["RunningStat", "Count", "Mean", "Variance", "Moments", "Max", "TopK", "Histogram"]


def _tensor(x, device: torch.device | None = None) -> torch.Tensor:
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 0:
        raise ValueError("a statistic needs x of shape [sample, *feature], got a scalar")
    return t.detach().to(device) if device is not None else t.detach()


def _numpy(v) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    return v


class RunningStat:
    """Base class: `update`, `merge`, `state`, `from_state`, and `n` (samples seen)."""

    n: int

    def update(self, x, **kwargs) -> None:
        raise NotImplementedError

    def merge(self: S, other: S) -> S:
        """Combine `other` (same kind and feature shape) into this statistic; returns self."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state(cls: type[S], state: dict[str, Any]) -> S:
        raise NotImplementedError

    def _check_same(self, other) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n})"


class Count(RunningStat):
    """Samples seen, and per feature how many samples were nonzero (True): e.g. how often a neuron fires,
    with `update(acts > 0)`."""

    def __init__(self):
        self.n = 0
        self.counts: torch.Tensor | None = None  # int64 [*feature]

    def update(self, x) -> None:
        import torch

        x = _tensor(x, None if self.counts is None else self.counts.device)
        nonzero = x if x.dtype == torch.bool else x != 0
        c = nonzero.sum(0, dtype=torch.int32).long()  # int32 within a batch (< 2^31 samples) is ~4x faster on CPU
        self.counts = c if self.counts is None else self.counts + c
        self.n += x.shape[0]

    def merge(self, other: "Count") -> "Count":
        self._check_same(other)
        if other.counts is not None:
            oc = other.counts.to(self.counts.device) if self.counts is not None else other.counts
            self.counts = oc.clone() if self.counts is None else self.counts + oc
        self.n += other.n
        return self

    @property
    def fraction(self) -> torch.Tensor:
        """Fraction of samples that were nonzero, per feature."""
        return self.counts.double() / self.n

    def state(self) -> dict[str, Any]:
        return {"n": int(self.n), "counts": _numpy(self.counts)}

    @classmethod
    def from_state(cls, state) -> "Count":
        import torch

        out = cls()
        out.n = int(state["n"])
        out.counts = None if state["counts"] is None else torch.as_tensor(np.asarray(state["counts"]))
        return out


class _CentralMoments(RunningStat):
    """n, mean and central moment sums M_p = Σ (x − mean)^p for p = 2..order, combined with the pairwise
    update of Chan, Golub & LeVeque (1979) and its higher-order form (Pébay 2008)."""

    order = 1

    def __init__(self):
        self.n = 0
        self.mean_: torch.Tensor | None = None
        self.m: dict[int, torch.Tensor] = {}  # p -> M_p, float64 [*feature]

    def update(self, x) -> None:
        x = _tensor(x, None if self.mean_ is None else self.mean_.device).double()
        nb = x.shape[0]
        if nb == 0:
            return
        mean = x.mean(0)
        other = type(self)()
        other.n, other.mean_ = nb, mean
        if self.order >= 2:
            d = x - mean
            other.m = {p: (d**p).sum(0) for p in range(2, self.order + 1)}
        self._combine(other)

    def merge(self, other):
        self._check_same(other)
        self._combine(other)
        return self

    def _combine(self, b: "_CentralMoments") -> None:
        if b.n == 0:
            return
        if self.n == 0:
            self.n, self.mean_, self.m = b.n, b.mean_.clone(), {p: v.clone() for p, v in b.m.items()}
            return
        na, nb = float(self.n), float(b.n)
        n = na + nb
        mb = b.mean_.to(self.mean_.device)
        bm = {p: v.to(self.mean_.device) for p, v in b.m.items()}
        delta = mb - self.mean_
        a2 = self.m.get(2)
        new = {}
        if self.order >= 2:
            new[2] = a2 + bm[2] + delta**2 * na * nb / n
        if self.order >= 3:
            new[3] = (self.m[3] + bm[3] + delta**3 * na * nb * (na - nb) / n**2
                      + 3 * delta * (na * bm[2] - nb * a2) / n)
        if self.order >= 4:
            new[4] = (self.m[4] + bm[4] + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
                      + 6 * delta**2 * (na * na * bm[2] + nb * nb * a2) / n**2
                      + 4 * delta * (na * bm[3] - nb * self.m[3]) / n)
        self.mean_ = self.mean_ + delta * nb / n
        self.m = new
        self.n = int(n)

    @property
    def mean(self) -> torch.Tensor:
        return self.mean_

    def state(self) -> dict[str, Any]:
        out = {"n": int(self.n), "mean": _numpy(self.mean_)}
        out.update({f"m{p}": _numpy(self.m.get(p)) for p in range(2, self.order + 1)})
        return out

    @classmethod
    def from_state(cls, state):
        import torch

        out = cls()
        out.n = int(state["n"])
        if out.n:
            out.mean_ = torch.as_tensor(np.asarray(state["mean"], dtype=np.float64))
            out.m = {p: torch.as_tensor(np.asarray(state[f"m{p}"], dtype=np.float64)) for p in range(2, cls.order + 1)}
        return out


class Mean(_CentralMoments):
    """Running mean per feature."""

    order = 1


class Variance(_CentralMoments):
    """Running mean and variance per feature (Chan et al.'s parallel algorithm)."""

    order = 2

    def variance(self, ddof: int = 0) -> torch.Tensor:
        """Σ(x − mean)² / (n − ddof): ddof=0 is numpy's default, ddof=1 the unbiased estimate."""
        return self.m[2] / (self.n - ddof)

    def std(self, ddof: int = 0) -> torch.Tensor:
        return self.variance(ddof).sqrt()


class Moments(Variance):
    """Mean, variance, skewness and kurtosis per feature, from central moments up to the 4th."""

    order = 4

    def skewness(self) -> torch.Tensor:
        """m3 / m2^1.5 with population moments (scipy.stats.skew, bias=True)."""
        m2, m3 = self.m[2] / self.n, self.m[3] / self.n
        return m3 / m2**1.5

    def kurtosis(self, excess: bool = True) -> torch.Tensor:
        """m4 / m2² (− 3 when `excess`) with population moments (scipy.stats.kurtosis, bias=True)."""
        m2, m4 = self.m[2] / self.n, self.m[4] / self.n
        return m4 / m2**2 - (3.0 if excess else 0.0)


def _ids_for(stat, nb: int, ids, device) -> torch.Tensor:
    import torch

    if ids is None:
        return torch.arange(stat.n, stat.n + nb, dtype=torch.int64, device=device)
    ids = _tensor(ids, device).to(torch.int64).reshape(-1)
    if ids.shape[0] != nb:
        raise ValueError(f"ids has {ids.shape[0]} entries for {nb} samples")
    return ids


def _order(keys: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Indices that sort lexicographically by keys[0], then keys[1], ... (all ascending) along `dim`."""
    import torch

    idx = None
    for key in reversed(keys):  # stable sorts from the least significant key up
        k = key if idx is None else key.gather(dim, idx)
        o = torch.sort(k, dim=dim, stable=True).indices
        idx = o if idx is None else idx.gather(dim, o)
    return idx


class Max(RunningStat):
    """The `k` entries of largest magnitude over all samples and features, with the sample id and the
    feature index of each (e.g. the largest activations of a layer and which token and dimension had them).

    `values` are signed, sorted by |value| descending; ties are broken by smaller sample id, then smaller
    feature index, so any merge order gives the same answer. `feature_index(i)` unravels entry i's flat
    feature index into the feature axes.
    """

    def __init__(self, k: int = 1):
        import torch

        self.k, self.n = int(k), 0
        self.values = torch.empty(0, dtype=torch.float64)
        self.samples = torch.empty(0, dtype=torch.int64)
        self.features = torch.empty(0, dtype=torch.int64)  # flat index into the feature axes
        self.feature_shape: tuple[int, ...] | None = None

    def update(self, x, ids=None) -> None:
        import torch

        x = _tensor(x, self.values.device if self.n else None)
        nb = x.shape[0]
        if self.feature_shape is None:
            self.feature_shape = tuple(x.shape[1:])
            self.values, self.samples, self.features = (t.to(x.device) for t in (self.values, self.samples, self.features))
        sid = _ids_for(self, nb, ids, x.device)
        self.n += nb
        flat = x.reshape(nb, math.prod(self.feature_shape))
        nf = flat.shape[1]
        if nb == 0 or nf == 0:
            return
        # Pre-select per batch, in the input's dtype (|x| is exact in it): the k largest magnitudes (plus
        # everything tied with the k-th); only those are widened to float64.
        mag = flat.abs().reshape(-1)
        kk = min(self.k, mag.numel())
        kth = torch.topk(mag, kk).values[-1]
        pick = torch.nonzero(mag >= kth).reshape(-1)
        cand = _TopEntries(flat.reshape(-1)[pick].double(), sid[pick // nf], pick % nf)
        self._keep(cand.concat(_TopEntries(self.values, self.samples, self.features)))

    def _keep(self, c: "_TopEntries") -> None:
        o = _order([-c.values.abs(), c.samples, c.features], 0)[: self.k]
        self.values, self.samples, self.features = c.values[o], c.samples[o], c.features[o]

    def merge(self, other: "Max") -> "Max":
        self._check_same(other)
        if self.feature_shape is None:
            self.feature_shape = other.feature_shape
        dev = self.values.device
        self._keep(_TopEntries(self.values, self.samples, self.features).concat(
            _TopEntries(other.values.to(dev), other.samples.to(dev), other.features.to(dev))))
        self.n += other.n
        return self

    def feature_index(self, i: int) -> tuple[int, ...]:
        return tuple(int(v) for v in np.unravel_index(int(self.features[i]), self.feature_shape))

    def state(self) -> dict[str, Any]:
        return {"k": self.k, "n": int(self.n), "values": _numpy(self.values), "samples": _numpy(self.samples),
                "features": _numpy(self.features),
                "feature_shape": None if self.feature_shape is None else np.asarray(self.feature_shape, dtype=np.int64)}

    @classmethod
    def from_state(cls, state) -> "Max":
        import torch

        out = cls(int(state["k"]))
        out.n = int(state["n"])
        out.values = torch.as_tensor(np.asarray(state["values"], dtype=np.float64))
        out.samples = torch.as_tensor(np.asarray(state["samples"], dtype=np.int64))
        out.features = torch.as_tensor(np.asarray(state["features"], dtype=np.int64))
        fs = state.get("feature_shape")
        out.feature_shape = None if fs is None else tuple(int(v) for v in np.asarray(fs))
        return out


class _TopEntries:
    def __init__(self, values, samples, features):
        self.values, self.samples, self.features = values, samples, features

    def concat(self, other: "_TopEntries") -> "_TopEntries":
        import torch

        return _TopEntries(torch.cat([self.values, other.values]), torch.cat([self.samples, other.samples]),
                           torch.cat([self.features, other.features]))


class TopK(RunningStat):
    """Per feature, the `k` largest values (or largest magnitudes with `by="abs"`) and the ids of the samples
    that had them: e.g. the top-activating tokens of every neuron.

    `values` and `ids` are `[k, *feature]`, best first; while fewer than `k` samples were seen the tail holds
    NaN and id -1. Ties are broken by smaller id, so any merge order gives the same answer.
    """

    def __init__(self, k: int = 10, by: str = "value"):
        if by not in ("value", "abs"):
            raise ValueError(f"by must be 'value' or 'abs', got {by!r}")
        self.k, self.by, self.n = int(k), by, 0
        self.values: torch.Tensor | None = None  # float64 [k, *feature]
        self.ids: torch.Tensor | None = None  # int64 [k, *feature]

    def _score(self, v: torch.Tensor) -> torch.Tensor:
        import torch

        s = v.abs() if self.by == "abs" else v
        return torch.where(torch.isnan(s), torch.full_like(s, -torch.inf), s)

    def update(self, x, ids=None) -> None:
        x = _tensor(x, None if self.values is None else self.values.device).double()
        nb = x.shape[0]
        sid = _ids_for(self, nb, ids, x.device)
        self.n += nb
        sid = sid.reshape(nb, *([1] * (x.ndim - 1))).expand_as(x)
        self._keep(x, sid)

    def _keep(self, values: torch.Tensor, ids: torch.Tensor) -> None:
        import torch

        if self.values is not None:
            values, ids = torch.cat([self.values, values]), torch.cat([self.ids, ids])
        o = _order([-self._score(values), torch.where(ids < 0, torch.iinfo(torch.int64).max, ids)], 0)[: self.k]
        values, ids = values.gather(0, o), ids.gather(0, o)
        if values.shape[0] < self.k:  # pad to k rows
            pad = self.k - values.shape[0]
            values = torch.cat([values, values.new_full((pad, *values.shape[1:]), float("nan"))])
            ids = torch.cat([ids, ids.new_full((pad, *ids.shape[1:]), -1)])
        self.values, self.ids = values, ids

    def merge(self, other: "TopK") -> "TopK":
        self._check_same(other)
        if other.values is not None:
            dev = self.values.device if self.values is not None else other.values.device
            self._keep(other.values.to(dev), other.ids.to(dev))
        self.n += other.n
        return self

    def state(self) -> dict[str, Any]:
        return {"k": self.k, "by": self.by, "n": int(self.n), "values": _numpy(self.values), "ids": _numpy(self.ids)}

    @classmethod
    def from_state(cls, state) -> "TopK":
        import torch

        out = cls(int(state["k"]), str(state["by"]))
        out.n = int(state["n"])
        if state["values"] is not None:
            out.values = torch.as_tensor(np.asarray(state["values"], dtype=np.float64))
            out.ids = torch.as_tensor(np.asarray(state["ids"], dtype=np.int64))
        return out


class Histogram(RunningStat):
    """Counts per bin of fixed `edges`, per feature (`counts` is `[*feature, bins]`), with the bins of
    `numpy.histogram`: [e_i, e_i+1) and the last bin closed. Values below / above the edges are counted in
    `underflow` / `overflow`, NaN in `nan`, so nothing is lost."""

    def __init__(self, edges):
        import torch

        self.edges = torch.as_tensor(np.asarray(edges, dtype=np.float64))
        if self.edges.ndim != 1 or self.edges.numel() < 2 or not bool((self.edges[1:] > self.edges[:-1]).all()):
            raise ValueError("edges must be 1-D, increasing, with at least 2 entries")
        self.n = 0
        self.counts = self.underflow = self.overflow = self.nan = None

    @property
    def bins(self) -> int:
        return self.edges.numel() - 1

    def update(self, x) -> None:
        import torch

        x = _tensor(x, None if self.counts is None else self.counts.device).double()
        nb, fshape = x.shape[0], tuple(x.shape[1:])
        edges = self.edges.to(x.device)
        flat = x.reshape(nb, math.prod(fshape))  # [sample, feature]
        nf = flat.shape[1]
        idx = torch.bucketize(flat, edges, right=True) - 1  # bin i holds edges[i] <= x < edges[i+1]
        idx = torch.where(flat == edges[-1], torch.full_like(idx, self.bins - 1), idx)
        nan = torch.isnan(flat)
        # slot 0 underflow, 1..bins the bins, bins+1 overflow, bins+2 NaN
        slot = torch.where(nan, self.bins + 2, (idx + 1).clamp(0, self.bins + 1))
        feat = torch.arange(nf, device=x.device).expand(nb, nf)
        counts = torch.zeros(nf * (self.bins + 3), dtype=torch.int64, device=x.device)
        counts.index_add_(0, (feat * (self.bins + 3) + slot).reshape(-1),
                          torch.ones(nb * nf, dtype=torch.int64, device=x.device))
        counts = counts.view(*fshape, self.bins + 3)
        parts = (counts[..., 1: self.bins + 1], counts[..., 0], counts[..., self.bins + 1], counts[..., self.bins + 2])
        if self.counts is None:
            self.counts, self.underflow, self.overflow, self.nan = parts
        else:
            self.counts, self.underflow, self.overflow, self.nan = (a + b for a, b in zip(
                (self.counts, self.underflow, self.overflow, self.nan), parts))
        self.n += nb

    def merge(self, other: "Histogram") -> "Histogram":
        import torch

        self._check_same(other)
        if not torch.equal(self.edges, other.edges):
            raise ValueError("cannot merge histograms with different edges")
        if other.counts is not None:
            if self.counts is None:
                self.counts, self.underflow, self.overflow, self.nan = (t.clone() for t in (
                    other.counts, other.underflow, other.overflow, other.nan))
            else:
                dev = self.counts.device
                self.counts, self.underflow, self.overflow, self.nan = (a + b.to(dev) for a, b in zip(
                    (self.counts, self.underflow, self.overflow, self.nan),
                    (other.counts, other.underflow, other.overflow, other.nan)))
        self.n += other.n
        return self

    def state(self) -> dict[str, Any]:
        return {"n": int(self.n), "edges": _numpy(self.edges), "counts": _numpy(self.counts),
                "underflow": _numpy(self.underflow), "overflow": _numpy(self.overflow), "nan": _numpy(self.nan)}

    @classmethod
    def from_state(cls, state) -> "Histogram":
        import torch

        out = cls(state["edges"])
        out.n = int(state["n"])
        if state["counts"] is not None:
            out.counts, out.underflow, out.overflow, out.nan = (
                torch.as_tensor(np.asarray(state[k], dtype=np.int64)) for k in ("counts", "underflow", "overflow", "nan"))
        return out
