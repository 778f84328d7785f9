"""`similarity`: linear CKA (Kornblith et al. 2019) of the residual stream between the layers of a step,
and of each layer with itself at the previous checkpoint.

On the first `tokens` evaluation tokens (rows taken from the domains in turn), X_l = the residual stream
after block l, `[token, d_model]`. With K_l = X̃_l X̃_lᵀ the Gram matrix of the column-centred X̃_l,
CKA(X, Y) = ⟨K_X, K_Y⟩_F / (‖K_X‖_F ‖K_Y‖_F), which equals the feature-space form
‖X̃ᵀỸ‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F); the Gram form costs tokens² per layer whatever the model's width.
- `cka` [layer, other_layer]: within the step;
- `cka_prev` [layer]: layer l at this step vs layer l at the previous checkpoint (`prev_step`), on the
  same tokens (NaN at the first step); it reruns the previous checkpoint on those tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from workbench.analysis import forward
from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.registry import register

if TYPE_CHECKING:
    import torch


def normalized_grams(xs: list[torch.Tensor]) -> torch.Tensor:
    """Each `[token, feature]` matrix as its centred Gram matrix of unit Frobenius norm, flattened:
    `[len(xs), token²]` float64, so that CKA is a dot product of rows."""
    import torch

    out = []
    for x in xs:
        x = x.double()
        x = x - x.mean(0)
        k = (x @ x.T).flatten()
        out.append(k / torch.linalg.vector_norm(k))
    return torch.stack(out)


@register
class Similarity(Analysis):
    name = "similarity"
    kind = "forward"
    reads_checkpoints = ("step", "prev")  # cka_prev
    dims = ("layer", "other_layer")
    description = "linear CKA between layers and with the previous checkpoint (see workbench/analyses/similarity.py)"
    title, page, page_order = "Similarity", "apps.dashboard.views.similarity", 40

    @dataclass(frozen=True)
    class Params:
        tokens: int = 512
        seq_len: int | None = None  # row length; default: the run's training seq_len

    def compute(self, ctx: StepContext) -> xr.Dataset:
        grams = self.grams(ctx, ctx.step)  # [layer, token^2]
        cka = (grams @ grams.T).numpy()
        n = grams.shape[0]
        prev = np.full(n, np.nan)
        if ctx.prev_step is not None:
            prev = (grams * self.grams(ctx, ctx.prev_step)).sum(-1).numpy()
        return xr.Dataset(
            {"cka": (("layer", "other_layer"), cka, {
                "description": "linear CKA of the residual streams after blocks layer and other_layer", "units": "1"}),
             "cka_prev": ("layer", prev, {
                 "description": "linear CKA of the residual stream after the block with its value at prev_step "
                                "(NaN at the first step)", "units": "1"}),
             "prev_step": ((), ctx.prev_step if ctx.prev_step is not None else -1, {
                 "description": "the checkpoint cka_prev compares with (-1 at the first step)"})},
            coords={"layer": np.arange(n), "other_layer": np.arange(n)})

    def grams(self, ctx: StepContext, step: int) -> torch.Tensor:
        import torch

        model = ctx.model(step, streamable=True)
        resid: dict[int, list[torch.Tensor]] = {}
        with torch.no_grad():  # within a layer the batches come in order, whole or streamed
            forward.stream_batches(model, sample(ctx, self.params.tokens, forward.seq_len(ctx, self.params.seq_len)),
                                   ["blocks.{l}.hook_resid_post"], lambda b, name, x: resid.setdefault(
                                       forward.layer_of(name), []).append(x.flatten(0, 1).cpu()))
        return normalized_grams([torch.cat(resid[l])[: self.params.tokens] for l in sorted(resid)])


def sample(ctx: StepContext, tokens: int, length: int) -> list[forward.Batch]:
    """Single-row batches, taken from the domains in turn, until they hold at least `tokens` tokens."""
    by_domain: dict[str, list[forward.Batch]] = {}
    for b in forward.batches(ctx, length, batch_size=1):
        by_domain.setdefault(b.domain, []).append(b)
    out, n, i = [], 0, 0
    queues = [by_domain[d] for d in sorted(by_domain)]
    while n < tokens and any(i < len(q) for q in queues):
        for q in queues:
            if i < len(q) and n < tokens:
                out.append(q[i])
                n += q[i].n_tokens
        i += 1
    return out
