"""`lens`: the logit lens per layer (nostalgebraist 2020): the residual stream after each block read out
through the model's final norm and unembedding, compared with the model's own next-token distribution.

Over the evaluation batches of `workbench.analysis.forward`, per layer l (the last layer's lens is the
model's output: KL 0, agreement 1):
- `kl` [layer]: mean KL(p_final ‖ p_l) in nats, p = softmax of the logits;
- `top1_agreement` [layer]: share of tokens where argmax p_l equals argmax p_final.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from workbench.analysis import forward, stats
from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.registry import register

if TYPE_CHECKING:
    import torch


@register
class Lens(Analysis):
    name = "lens"
    kind = "forward"
    dims = ("layer",)
    description = "logit lens per layer: KL to the final distribution, top-1 agreement (see workbench/analyses/lens.py)"
    title, page, page_order = "Logit lens", "apps.dashboard.views.lens", 30

    Params = forward.EvalParams

    def compute(self, ctx: StepContext) -> xr.Dataset:
        import torch

        p = self.params
        model = ctx.model(streamable=True)
        kl: dict[int, stats.Mean] = {}
        agree: dict[int, stats.Mean] = {}
        batches = forward.eval_batches(ctx, p)
        with torch.no_grad():
            if forward.is_streamed(model):  # a first pass for the final residuals, a second for every layer's
                last = {b.first: x for b, x in forward.final_residuals(model, batches)}
                forward.stream_batches(model, batches, ["blocks.{l}.hook_resid_post"], lambda b, name, x: self.update(
                    kl, agree, model, {forward.layer_of(name): x.flatten(0, 1)}, last[b.first]))
            else:
                for b in batches:
                    resid = forward.residuals(model, b.ids)  # {layer: [token, d_model]}
                    self.update(kl, agree, model, resid, resid[max(resid)])
        layers = sorted(kl)
        return xr.Dataset(
            {"kl": ("layer", np.array([kl[l].mean.item() for l in layers]), {
                "description": "mean KL(final distribution || logit lens of the block's output)", "units": "nats"}),
             "top1_agreement": ("layer", np.array([agree[l].mean.item() for l in layers]), {
                 "description": "share of tokens whose logit-lens argmax is the model's own argmax", "units": "1"})},
            coords={"layer": layers})

    @staticmethod
    def update(kl: dict[int, stats.Mean], agree: dict[int, stats.Mean], model, resid: dict[int, torch.Tensor],
               last: torch.Tensor) -> None:
        """Feed the lens of the residual streams `resid` ({layer: [token, d_model]}) of one batch, against the
        model's own distribution from `last` (its final residual stream), a token chunk at a time."""
        import torch

        for c in forward.token_chunks(last.shape[0]):
            log_final = forward.log_probs(model, last[c])  # [chunk, vocab]
            top_final = log_final.argmax(-1)
            for layer, x in resid.items():
                log_lens = forward.log_probs(model, x[c])
                kl_token = torch.nn.functional.kl_div(log_lens, log_final, log_target=True, reduction="none")
                kl.setdefault(layer, stats.Mean()).update(kl_token.sum(-1, keepdim=True))
                agree.setdefault(layer, stats.Mean()).update((log_lens.argmax(-1) == top_final)[:, None])
