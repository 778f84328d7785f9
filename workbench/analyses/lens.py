"""`lens`: the logit lens per layer (nostalgebraist 2020): the residual stream after each block read out
through the model's final norm and unembedding, compared with the model's own next-token distribution.

Over the evaluation batches of `workbench.analysis.forward`, per layer l (the last layer's lens is the
model's output: KL 0, agreement 1):
- `kl` [layer]: mean KL(p_final ‖ p_l) in nats, p = softmax of the logits;
- `top1_agreement` [layer]: share of tokens where argmax p_l equals argmax p_final.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from workbench.analysis import forward, stats
from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.registry import register


@register
class Lens(Analysis):
    name = "lens"
    kind = "forward"
    dims = ("layer",)
    description = "logit lens per layer: KL to the final distribution, top-1 agreement (see workbench/analyses/lens.py)"

    Params = forward.EvalParams

    def compute(self, ctx: StepContext) -> xr.Dataset:
        p = self.params
        model = ctx.model()
        kl: dict[int, stats.Mean] = {}
        agree: dict[int, stats.Mean] = {}
        with torch.no_grad():
            for b in forward.eval_batches(ctx, p):
                resid = forward.residuals(model, b.ids)  # {layer: [token, d_model]}
                last = resid[max(resid)]
                for c in forward.token_chunks(last.shape[0]):
                    log_final = forward.log_probs(model, last[c])  # [chunk, vocab]
                    top_final = log_final.argmax(-1)
                    for layer, x in resid.items():
                        log_lens = forward.log_probs(model, x[c])
                        kl_token = torch.nn.functional.kl_div(log_lens, log_final, log_target=True, reduction="none")
                        kl.setdefault(layer, stats.Mean()).update(kl_token.sum(-1, keepdim=True))
                        agree.setdefault(layer, stats.Mean()).update((log_lens.argmax(-1) == top_final)[:, None])
        layers = sorted(kl)
        return xr.Dataset(
            {"kl": ("layer", np.array([kl[l].mean.item() for l in layers]), {
                "description": "mean KL(final distribution || logit lens of the block's output)", "units": "nats"}),
             "top1_agreement": ("layer", np.array([agree[l].mean.item() for l in layers]), {
                 "description": "share of tokens whose logit-lens argmax is the model's own argmax", "units": "1"})},
            coords={"layer": layers})
