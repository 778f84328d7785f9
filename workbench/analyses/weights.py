"""`weights`: spectral and trajectory statistics of every weight matrix at every step (no data needed).

For each 2-D parameter W (`param` = its HF name; norms and other vectors excluded) at step t, with W_0 the
run's first checkpoint and W_prev the checkpoint stored before t:

- `frobenius_norm` ‖W‖_F, `spectral_norm` ‖W‖_2 = σ_max;
- `stable_rank` ‖W‖_F² / ‖W‖_2²;
- `effective_rank` exp(−Σ p_i ln p_i) with p_i = σ_i / Σ_j σ_j (Roy & Vetterli 2007);
- `alpha`: the WeightWatcher-style power-law exponent of the eigenvalues λ_i = σ_i² of WᵀW (see
  `powerlaw_fit`), with `alpha_xmin`, `alpha_ks` and `alpha_tail` describing the fit;
- `dist_to_init` ‖W_t − W_0‖_F, `cos_to_init` ⟨W_t, W_0⟩ / (‖W_t‖_F ‖W_0‖_F);
- `dist_to_prev` ‖W_t − W_prev‖_F, `update_ratio` ‖W_t − W_prev‖_F / ‖W_prev‖_F (NaN at the first step).

Singular values come from `torch.linalg.svdvals` in float32 on one thread (bfloat16 and float16 widened
exactly; one thread so that results do not depend on the number of workers or threads). Sums of squares
and dot products accumulate in float32 along each row and in float64 across rows (relative error ~1e-8 on
norms and distances, ~1e-7 absolute on cosines; differences of nearby checkpoints are exact in float32);
the power-law fit runs in float64. `prev_step` and `init_step` record which
checkpoints were compared. (Whole-model distances between checkpoints: `workbench.store.verify.checkpoint_distances`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    import zarr

from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.registry import register

FIT_BLOCK = 256  # candidate xmins evaluated at once in the KS search (memory: FIT_BLOCK x n floats)

VARIABLES = {
    "frobenius_norm": ("Frobenius norm ‖W‖_F", "1"),
    "spectral_norm": ("spectral norm ‖W‖_2: the largest singular value (float32 SVD)", "1"),
    "stable_rank": ("stable rank ‖W‖_F² / ‖W‖_2²", "1"),
    "effective_rank": ("effective rank exp(H(p)), p_i = σ_i / Σσ (Roy & Vetterli 2007)", "1"),
    "alpha": ("power-law exponent of the tail of the eigenvalues of WᵀW: 1 + n / Σ ln(λ_i / λ_min) over the n "
              "eigenvalues ≥ λ_min, λ_min chosen by Kolmogorov–Smirnov minimisation (Clauset et al. 2009), "
              "as WeightWatcher's alpha", "1"),
    "alpha_xmin": ("λ_min: smallest eigenvalue of WᵀW in the fitted power-law tail", "1"),
    "alpha_ks": ("Kolmogorov–Smirnov distance between the tail and the fitted power law", "1"),
    "alpha_tail": ("number of eigenvalues in the fitted tail", "1"),
    "dist_to_init": ("‖W_t − W_0‖_F, W_0 at init_step", "1"),
    "cos_to_init": ("cosine similarity of flattened W_t and W_0", "1"),
    "dist_to_prev": ("‖W_t − W_prev‖_F, W_prev at prev_step (NaN at the first step)", "1"),
    "update_ratio": ("‖W_t − W_prev‖_F / ‖W_prev‖_F (NaN at the first step)", "1"),
}
STATISTICS = [v for v in VARIABLES if not v.startswith("alpha_")]


@register
class Weights(Analysis):
    name = "weights"
    kind = "weights"
    reads_checkpoints = ("step", "prev", "init")  # dist_to_prev, dist_to_init
    dims = ("param",)
    description = "spectral and trajectory statistics of every weight matrix (see workbench/analyses/weights.py)"
    title, page, page_order = "Weights", "apps.dashboard.views.weights", 10

    @dataclass(frozen=True)
    class Params:
        min_tail: int = 10  # fewest eigenvalues a power-law tail may have (alpha is NaN for smaller matrices)

    def compute(self, ctx: StepContext):
        import xarray as xr

        init, prev = ctx.init_step, ctx.prev_step
        names, layers, templates, rows, cols = [], [], [], [], []
        columns: dict[str, list[np.ndarray]] = {v: [] for v in VARIABLES}
        arrays = ctx.run.parameter_arrays
        for template in matrix_templates(arrays):
            stacked = "{layer}" in template
            for i in range(arrays[template].shape[1] if stacked else 1):  # one matrix at a time: see `matrices`
                one = slice(i, i + 1)
                w, w0 = ctx.matrices(template, layers=one), ctx.matrices(template, init, one)  # [1, out, in]
                wp = ctx.matrices(template, prev, one) if prev is not None else None
                for v, values in matrix_statistics(w, w0, wp, self.params.min_tail).items():
                    columns[v].append(values)
                names.append(template.format(layer=i) if stacked else template)
                layers.append(i if stacked else -1)
                templates.append(template)
                rows.append(w.shape[1])
                cols.append(w.shape[2])
        data = {v: ("param", np.concatenate(columns[v]) if columns[v] else np.empty(0),
                    {"description": d, "units": u}) for v, (d, u) in VARIABLES.items()}
        data["prev_step"] = ((), np.int64(-1 if prev is None else prev),
                             {"description": "step of W_prev (-1: none, the first step)"})
        data["init_step"] = ((), np.int64(init), {"description": "step of W_0 (the run's first checkpoint)"})
        coords = {"param": ("param", np.array(names, dtype=object), {"description": "HF parameter name"}),
                  "layer": ("param", np.array(layers, dtype=np.int64), {"description": "layer index, -1 if not stacked"}),
                  "template": ("param", np.array(templates, dtype=object), {"description": "HF name template"}),
                  "rows": ("param", np.array(rows, dtype=np.int64), {"description": "rows (out features)"}),
                  "cols": ("param", np.array(cols, dtype=np.int64), {"description": "columns (in features)"})}
        return xr.Dataset(data, coords=coords)

    @classmethod
    def summary(cls, ds, step: int | None = None):
        """Per step the mean over matrices of each statistic; with `step`, every matrix at that step."""
        import pandas as pd

        if step is not None:
            return ds[STATISTICS].sel(step=step).to_dataframe()[STATISTICS]
        return pd.DataFrame({v: ds[v].mean("param").to_series() for v in STATISTICS})


def matrix_templates(arrays: dict[str, "zarr.Array"]) -> list[str]:
    """Templates of the floating-point 2-D parameters among a run's `parameter_arrays` (`[step, (layer), out,
    in]`), in model order (unstacked first, then per-layer names)."""
    out = [t for t, a in arrays.items()
           if a.ndim - 1 - ("{layer}" in t) == 2 and "float" in a.attrs["dtype"]]
    return sorted(out, key=lambda t: ("{layer}" in t, t))


def matrix_statistics(w: torch.Tensor, w0: torch.Tensor, wp: torch.Tensor | None, min_tail: int = 10) -> dict[str, np.ndarray]:
    """Every statistic of the `weights` analysis for a stack of matrices `[n, out, in]` (float32), given the
    same matrices at the first (`w0`) and previous (`wp`, None at the first step) checkpoints."""
    import torch

    n = w.shape[0]
    wide = w.shape[-2] < w.shape[-1]  # the same singular values from the tall transpose, about 2x faster
    sv = _svdvals(w.float().transpose(-2, -1) if wide else w.float()).double().numpy()  # [n, min(out, in)]
    frob, frob0 = _sumsq(w).sqrt().numpy(), _sumsq(w0).sqrt().numpy()
    out = {
        "frobenius_norm": frob,
        "spectral_norm": sv[:, 0],
        "dist_to_init": _sumsq(w - w0).sqrt().numpy(),
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        out["stable_rank"] = frob**2 / sv[:, 0] ** 2
        out["cos_to_init"] = torch.linalg.vecdot(w, w0).double().sum(-1).numpy() / (frob * frob0)
        if wp is None:
            out["dist_to_prev"] = out["update_ratio"] = np.full(n, np.nan)
        else:
            out["dist_to_prev"] = _sumsq(w - wp).sqrt().numpy()
            out["update_ratio"] = out["dist_to_prev"] / _sumsq(wp).sqrt().numpy()
    out["effective_rank"] = np.array([effective_rank(s) for s in sv])
    tol = sv[:, :1] * max(w.shape[-2:]) * np.finfo(np.float32).eps  # numerical rank, as numpy's matrix_rank
    fits = [powerlaw_fit(s[s > t] ** 2, min_tail) for s, t in zip(sv, tol[:, 0])]
    for i, key in enumerate(("alpha", "alpha_xmin", "alpha_ks", "alpha_tail")):
        out[key] = np.array([f[i] for f in fits], dtype=np.float64)
    return out


def _sumsq(x: torch.Tensor) -> torch.Tensor:
    """Σ x² over each matrix of `[n, out, in]`: in float32 along rows, in float64 across them (about 2x
    faster than widening everything to float64; relative error ~1e-8)."""
    import torch

    return torch.linalg.vecdot(x, x).double().sum(-1)


def _svdvals(w: torch.Tensor) -> torch.Tensor:
    """Singular values on one thread: LAPACK's multi-threaded SVD rounds differently with the number of
    threads, which can move the power-law fit's xmin; on one thread the results do not depend on how many
    workers or threads computed them (and the SVDs of these sizes gain little from more threads)."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        return torch.linalg.svdvals(w)
    torch.set_num_threads(1)
    try:
        return torch.linalg.svdvals(w)
    finally:
        torch.set_num_threads(threads)


def effective_rank(sv: np.ndarray) -> float:
    """exp of the Shannon entropy of p_i = σ_i / Σσ (0 ln 0 = 0); NaN for a zero matrix."""
    sv = np.asarray(sv, dtype=np.float64)
    total = sv.sum()
    if not total > 0:
        return float("nan")
    p = sv[sv > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def powerlaw_fit(eigs: np.ndarray, min_tail: int = 10) -> tuple[float, float, float, int]:
    """(alpha, xmin, KS distance, tail size) of a continuous power law fitted to the tail of `eigs`.

    What is computed, exactly (Clauset, Shalizi & Newman 2009, as the `powerlaw` package that WeightWatcher
    uses): the positive eigenvalues sorted; every distinct value with at least `min_tail` values at or above
    it is a candidate xmin; for each, the maximum-likelihood exponent over the tail x_1 ≤ ... ≤ x_n (the n
    values ≥ xmin) is alpha = 1 + n / Σ ln(x_i / xmin), and the KS distance between the tail's empirical CDF
    and the fitted P(x) = 1 − (x / xmin)^(1 − alpha) is D = max_j max(P(x_j) − (j−1)/n, j/n − P(x_j)). The
    candidate with the smallest D wins (the smaller xmin on ties). The fit is scale-free (it depends on
    ratios only), so normalising WᵀW, as some tools do, does not change alpha. Fewer than `min_tail`
    positive values: all NaN, tail 0.
    """
    lam = np.sort(np.asarray(eigs, dtype=np.float64).reshape(-1))
    lam = lam[lam > 0]
    size = lam.size
    min_tail = max(2, int(min_tail))
    if size < min_tail:
        return float("nan"), float("nan"), float("nan"), 0
    logl = np.log(lam)
    suffix = np.cumsum(logl[::-1])[::-1]  # Σ_{i ≥ k} ln λ_i
    ks = np.arange(size - min_tail + 1)
    ks = ks[(ks == 0) | (lam[ks] > lam[np.maximum(ks - 1, 0)])]  # first of equal values
    n = size - ks
    denom = suffix[ks] - n * logl[ks]
    ok = denom > 0
    ks, n, alpha = ks[ok], n[ok], 1 + n[ok] / denom[ok]
    if not ks.size:
        return float("nan"), float("nan"), float("nan"), 0
    pos = np.arange(size)
    best = (np.inf, -1)
    for lo in range(0, ks.size, FIT_BLOCK):
        k, nn, a = ks[lo: lo + FIT_BLOCK, None], n[lo: lo + FIT_BLOCK, None], alpha[lo: lo + FIT_BLOCK, None]
        j = pos[None, :] - k  # index within the tail (negative: below xmin)
        with np.errstate(over="ignore", invalid="ignore"):
            cdf = 1 - np.exp(-(a - 1) * (logl[None, :] - logl[k]))
            dev = np.maximum(cdf - j / nn, (j + 1) / nn - cdf)
        dev[j < 0] = -np.inf
        d = dev.max(1)
        i = int(np.argmin(d))
        if d[i] < best[0]:
            best = (float(d[i]), lo + i)
    b = best[1]
    return float(alpha[b]), float(lam[ks[b]]), best[0], int(n[b])
