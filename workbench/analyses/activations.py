"""`activations`: statistics of the residual stream, the MLP units and the attention patterns per layer.

Over the evaluation batches of `workbench.analysis.forward`, streamed into mergeable statistics during the
forward pass (no activation is kept):
- `resid_norm` [layer]: mean L2 norm of the residual stream after the block (`hook_resid_post`);
- `resid_kurtosis` [layer]: kurtosis of the per-dimension activation scale, Σ_i s_i⁴ / d / (Σ_i s_i² / d)²
  with s_i² the mean of x_i² over tokens (He et al. 2024's outlier-feature kurtosis: 1 when every dimension
  has the same scale, large when a few dimensions carry outlier features);
- `massive_value`, `massive_dim`, `massive_token`, `massive_position` [layer, rank]: the `massive_k`
  residual-stream entries of largest magnitude (signed value, model dimension, evaluation token index and
  position in its row), and `massive_ratio` = |value| / mean |x| (Sun et al. 2024's massive activations);
- `fire_rate` [layer]: mean over MLP units of the share of tokens on which a unit fires (its activation
  function's input, `mlp.hook_pre`, is > 0; for gated MLPs, the gate); `dead_units` [layer]: share of units
  that never fire; `rare_units` [layer]: share firing on fewer than `rare_below` of the tokens;
- `attn_entropy` [layer, head]: mean entropy (nats) of the attention distribution of queries at
  positions ≥ 1; `sink_mass` [layer, head]: mean attention those queries give to the row's first token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from workbench.analysis import forward, stats
from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.registry import register

if TYPE_CHECKING:
    import torch

HOOKS = ("blocks.{l}.hook_resid_post", "blocks.{l}.mlp.hook_pre", "blocks.{l}.attn.hook_pattern")


class LayerStats:
    """The running statistics of one layer; `update(hook, x, first)` with a hook's activations."""

    def __init__(self, massive_k: int):
        self.norm, self.abs, self.square = stats.Mean(), stats.Mean(), stats.Mean()
        self.massive = stats.Max(massive_k)
        self.fires = stats.Count()
        self.entropy, self.sink = stats.Mean(), stats.Mean()

    def update(self, hook: str, x: torch.Tensor, first: int) -> None:
        import torch

        if hook == "hook_resid_post":  # [batch, pos, d_model]
            x = x.flatten(0, 1).float()
            ids = torch.arange(first, first + x.shape[0], device=x.device)  # evaluation token indices
            self.norm.update(torch.linalg.vector_norm(x, dim=-1, keepdim=True))
            self.abs.update(x.abs().mean(-1, keepdim=True))
            self.square.update(x.square())
            self.massive.update(x, ids=ids)
        elif hook == "mlp.hook_pre":  # [batch, pos, d_mlp]
            self.fires.update(x.flatten(0, 1) > 0)
        elif hook == "attn.hook_pattern":  # [batch, head, query, key]
            p = x[:, :, 1:].float()  # queries >= 1
            per_query = lambda t: t.transpose(1, 2).flatten(0, 1)  # [batch, head, query] -> [batch * query, head]
            self.entropy.update(per_query(torch.special.entr(p).sum(-1)))
            self.sink.update(per_query(p[..., 0]))

    def merge(self, other: "LayerStats") -> "LayerStats":
        for name, stat in vars(self).items():
            stat.merge(getattr(other, name))
        return self


@register
class Activations(Analysis):
    name = "activations"
    kind = "forward"
    dims = ("layer", "rank", "head")
    summary_vars = ("resid_norm", "resid_kurtosis", "massive_ratio", "fire_rate", "dead_units", "attn_entropy",
                    "sink_mass")
    description = ("residual-stream norm and kurtosis, massive activations, dead MLP units, attention entropy "
                   "and sink mass per layer (see workbench/analyses/activations.py)")
    title, page, page_order = "Activations", "apps.dashboard.views.activations", 20

    @dataclass(frozen=True)
    class Params(forward.EvalParams):
        massive_k: int = 4
        rare_below: float = 0.01

    def compute(self, ctx: StepContext) -> xr.Dataset:
        import torch

        p = self.params
        model = ctx.model(streamable=True)
        layers: dict[int, LayerStats] = {}
        batches = forward.eval_batches(ctx, p)

        def fn(batch: forward.Batch, name: str, x: torch.Tensor) -> None:
            layer = forward.layer_of(name)
            layers.setdefault(layer, LayerStats(p.massive_k)).update(name.split(".", 2)[2], x, batch.first)

        with torch.no_grad():
            forward.stream_batches(model, batches, HOOKS, fn)
        return self.dataset([layers[l] for l in sorted(layers)], batches)

    def dataset(self, layers: list[LayerStats], batches: list[forward.Batch]) -> xr.Dataset:
        """The Dataset of per-layer statistics (merged over any batches or partitions)."""
        import torch

        p = self.params
        s2 = torch.stack([s.square.mean for s in layers])  # [layer, d_model] mean of x_i^2
        kurtosis = (s2.square().mean(-1) / s2.mean(-1).square()).numpy()
        mean_abs = torch.cat([s.abs.mean for s in layers]).numpy()
        value = torch.stack([s.massive.values for s in layers]).numpy()  # [layer, rank]
        token = torch.stack([s.massive.samples for s in layers]).numpy()
        dim = torch.stack([s.massive.features for s in layers]).numpy()
        rate = torch.stack([s.fires.fraction for s in layers])  # [layer, d_mlp]
        lh = ("layer", "head")
        return xr.Dataset(
            {"resid_norm": ("layer", torch.cat([s.norm.mean for s in layers]).numpy(),
                            {"description": "mean L2 norm of the residual stream after the block", "units": "1"}),
             "resid_kurtosis": ("layer", kurtosis, {
                 "description": "kurtosis of the per-dimension RMS of the residual stream after the block "
                                "(mean s^4 / (mean s^2)^2; 1 = no outlier dimensions)", "units": "1"}),
             "massive_value": (("layer", "rank"), value, {
                 "description": "residual-stream entries of largest magnitude after the block (signed)", "units": "1"}),
             "massive_ratio": (("layer", "rank"), np.abs(value) / mean_abs[:, None], {
                 "description": "|massive_value| / mean |x| of the layer's residual stream", "units": "1"}),
             "massive_dim": (("layer", "rank"), dim, {"description": "model dimension of the entry"}),
             "massive_token": (("layer", "rank"), token, {"description": "evaluation token index of the entry"}),
             "massive_position": (("layer", "rank"), forward.positions(batches, token), {
                 "description": "position of the entry's token in its row (0 = the row's first token)"}),
             "fire_rate": ("layer", rate.mean(-1).numpy(), {
                 "description": "mean over MLP units of the share of tokens with mlp.hook_pre > 0", "units": "1"}),
             "dead_units": ("layer", (rate == 0).double().mean(-1).numpy(), {
                 "description": "share of MLP units with mlp.hook_pre > 0 on no evaluation token", "units": "1"}),
             "rare_units": ("layer", (rate < p.rare_below).double().mean(-1).numpy(), {
                 "description": f"share of MLP units firing on fewer than {p.rare_below} of the tokens", "units": "1"}),
             "attn_entropy": (lh, torch.stack([s.entropy.mean for s in layers]).numpy(), {
                 "description": "mean entropy of the attention of queries at positions >= 1", "units": "nats"}),
             "sink_mass": (lh, torch.stack([s.sink.mean for s in layers]).numpy(), {
                 "description": "mean attention of queries at positions >= 1 on the row's first token", "units": "1"})},
            coords={"layer": np.arange(len(layers)), "rank": np.arange(p.massive_k),
                    "head": np.arange(layers[0].entropy.mean.shape[0])})
