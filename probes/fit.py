"""Linear probes of every layer at once: sufficient statistics streamed from a forward pass, closed-form ridge
solved for all layers and label columns together, multinomial logistic regression as the reference fit, and the
scores (accuracy, macro-F1).

Shapes: features `[layer, example, d_model]`, labels as one-hot columns `[example, column]` (several tasks'
columns side by side), weights `[layer, d_model, column]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.analysis.stats import RunningStat

if TYPE_CHECKING:
    import torch


class CrossMoments(RunningStat):
    """Per layer: n, the means of x and y, and the centred sums Σ(x − x̄)(x − x̄)ᵀ and Σ(x − x̄)(y − ȳ)ᵀ, in
    float64 (on the device of the first batch), merged with Chan et al.'s pairwise update: what a ridge fit needs,
    from any partition of the examples."""

    def __init__(self):
        self.n = 0
        self.mean_x = self.mean_y = self.cxx = self.cxy = None

    def update(self, x, y=None) -> None:
        """`x` `[layer, example, d]`, `y` `[example, column]`."""
        import torch

        x = torch.as_tensor(x).double()
        y = torch.as_tensor(y, device=x.device).double()
        n = x.shape[1]
        if n == 0:
            return
        mx, my = x.mean(1), y.mean(0)  # [layer, d], [column]
        dx, dy = x - mx[:, None], y - my
        batch = _Moments(n, mx, my, dx.transpose(1, 2) @ dx, dx.transpose(1, 2) @ dy)
        self._add(batch)

    def _add(self, b: "_Moments") -> None:
        if self.n == 0:
            self.n, self.mean_x, self.mean_y, self.cxx, self.cxy = b.n, b.mean_x, b.mean_y, b.cxx, b.cxy
            return
        n = self.n + b.n
        delta_x, delta_y = b.mean_x - self.mean_x, b.mean_y - self.mean_y  # [layer, d], [column]
        w = self.n * b.n / n
        self.cxx = self.cxx + b.cxx + w * delta_x[:, :, None] * delta_x[:, None, :]
        self.cxy = self.cxy + b.cxy + w * delta_x[:, :, None] * delta_y[None, None, :]
        self.mean_x = self.mean_x + delta_x * (b.n / n)
        self.mean_y = self.mean_y + delta_y * (b.n / n)
        self.n = n

    def merge(self, other: "CrossMoments") -> "CrossMoments":
        self._check_same(other)
        if other.n:
            self._add(_Moments(other.n, other.mean_x, other.mean_y, other.cxx, other.cxy))
        return self

    def state(self) -> dict[str, Any]:
        return {"n": int(self.n), **{k: None if getattr(self, k) is None else getattr(self, k).cpu().numpy()
                                     for k in ("mean_x", "mean_y", "cxx", "cxy")}}

    @classmethod
    def from_state(cls, state) -> "CrossMoments":
        import torch

        out = cls()
        out.n = int(state["n"])
        for k in ("mean_x", "mean_y", "cxx", "cxy"):
            setattr(out, k, None if state[k] is None else torch.as_tensor(np.asarray(state[k])))
        return out


class _Moments:
    def __init__(self, n, mean_x, mean_y, cxx, cxy):
        self.n, self.mean_x, self.mean_y, self.cxx, self.cxy = n, mean_x, mean_y, cxx, cxy


def ridge(stats: CrossMoments, lambdas) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge weights and intercepts for every λ: minimise Σ‖y − xW − b‖² + λ·n·‖SW‖² per layer and column, with
    S the features' standard deviations (ridge on standardised features), from the centred statistics (one
    Cholesky factorisation per layer and λ, every column solved at once). Returns W `[λ, layer, d, column]` and
    b `[λ, layer, column]` (float64), for the features as they are."""
    import torch

    eye = torch.eye(stats.cxx.shape[-1], dtype=stats.cxx.dtype, device=stats.cxx.device)
    # on standardised features (each dimension scaled to unit variance): the penalty then weighs every dimension
    # alike, however large some dimensions of a residual stream are
    scale = torch.sqrt(torch.diagonal(stats.cxx, dim1=-2, dim2=-1) / stats.n).clamp_min(1e-12)  # [layer, d]
    corr = stats.cxx / (scale[:, :, None] * scale[:, None, :])
    cross = stats.cxy / scale[:, :, None]
    weights, biases = [], []
    for lam in lambdas:
        chol = torch.linalg.cholesky(corr + lam * stats.n * eye)  # [layer, d, d]
        w = torch.cholesky_solve(cross, chol) / scale[:, :, None]  # [layer, d, column]
        weights.append(w)
        biases.append(stats.mean_y[None] - (stats.mean_x[:, None] @ w)[:, 0])  # [layer, column]
    return torch.stack(weights), torch.stack(biases)


def logistic(x: torch.Tensor, labels: torch.Tensor, n_classes: int, c: float = 1.0, init=None,
             max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with L2, every layer at once: minimise per layer
    C·Σ −log softmax(xW + b)[label] + ½‖W‖² (scikit-learn's objective for `LogisticRegression(C=c)`), by L-BFGS
    on the layers' summed objectives (they are independent). `x` `[layer, example, d]`, `labels` `[example]`;
    `init` = (W `[layer, d, class]`, b `[layer, class]`), e.g. from ridge. Returns (W, b)."""
    import torch

    x = x.double()
    layers, _, d = x.shape
    w = torch.zeros(layers, d, n_classes, dtype=torch.float64) if init is None else init[0].double().clone()
    b = torch.zeros(layers, n_classes, dtype=torch.float64) if init is None else init[1].double().clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    target = labels.long().expand(layers, -1)

    def closure():
        opt.zero_grad()
        logits = x @ w + b[:, None]  # [layer, example, class]
        loss = c * torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="sum")
        loss = loss + 0.5 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean()) if len(labels) else float("nan")


def macro_f1(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Mean over the classes present in `labels` or `pred` of F1 = 2·TP / (2·TP + FP + FN)."""
    scores = []
    for k in range(n_classes):
        tp = np.sum((pred == k) & (labels == k))
        fp = np.sum((pred == k) & (labels != k))
        fn = np.sum((pred != k) & (labels == k))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")
