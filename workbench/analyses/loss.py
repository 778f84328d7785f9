"""`loss`: held-out next-token loss per domain, and the loss of every evaluation token.

Over the evaluation batches of `workbench.analysis.forward` (same tokens at every step):
- `loss` [domain]: mean cross-entropy of the next token, in nats; `perplexity` = exp(loss);
- `token_loss` [token]: each target token's cross-entropy (float32), with coordinates `token_domain`,
  `token_position` (position of the prediction in its row) and `target` (the token id), so that per-token
  trajectories (which tokens are learnt when, Xia et al. 2023) are one selection away.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from workbench.analysis import forward, stats
from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.registry import register


@register
class Loss(Analysis):
    name = "loss"
    kind = "forward"
    dims = ("domain", "token")
    description = "held-out next-token loss per domain and per token (see workbench/analyses/loss.py)"
    title, page, page_order = "Tokens", "apps.dashboard.views.tokens", 80  # its page: the loss of every token

    @classmethod
    def summary(cls, ds: xr.Dataset, step: int | None = None):
        """Per step the loss of every domain (one column each); with `step`, that step's per-domain values."""
        if step is not None:
            return ds[["loss", "perplexity", "tokens"]].sel(step=step).to_dataframe().drop(columns="step")
        return ds["loss"].to_pandas().rename(columns=lambda d: f"loss[{d}]")

    Params = forward.EvalParams

    def compute(self, ctx: StepContext) -> xr.Dataset:
        import torch

        p = self.params
        model = ctx.model(streamable=True)
        per_domain: dict[str, stats.Mean] = {}
        losses, domains, positions, targets = [], [], [], []
        with torch.no_grad():
            for b, last in forward.final_residuals(model, forward.eval_batches(ctx, p)):  # last: [token, d_model]
                y = b.targets.flatten().to(last.device)
                loss = torch.cat([torch.nn.functional.nll_loss(forward.log_probs(model, last[c]), y[c], reduction="none")
                                  for c in forward.token_chunks(len(y))])
                per_domain.setdefault(b.domain, stats.Mean()).update(loss[:, None])
                losses.append(loss.cpu())
                domains += [b.domain] * loss.numel()
                positions.append(torch.arange(b.ids.shape[1]).repeat(b.ids.shape[0]))
                targets.append(b.targets.flatten())
        names = sorted(per_domain)
        mean = np.array([per_domain[d].mean.item() for d in names])
        return xr.Dataset(
            {"loss": ("domain", mean, {"description": "mean next-token cross-entropy on the evaluation set",
                                       "units": "nats"}),
             "perplexity": ("domain", np.exp(mean), {"description": "exp(loss)", "units": "1"}),
             "tokens": ("domain", np.array([per_domain[d].n for d in names]),
                        {"description": "target tokens the loss is averaged over", "units": "tokens"}),
             "token_loss": ("token", torch.cat(losses).numpy().astype(np.float32),
                            {"description": "cross-entropy of each evaluation target token", "units": "nats"})},
            coords={"domain": names,
                    "token_domain": ("token", np.array(domains, dtype=object)),
                    "token_position": ("token", torch.cat(positions).numpy()),
                    "target": ("token", torch.cat(targets).numpy())})
