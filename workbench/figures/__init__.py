"""The dashboard's figures as plain functions of (results or run, selection), for notebooks too.

    import workbench, workbench.figures as wf
    run = workbench.open("runs/demo")
    wf.weight_map(run.results("weights"), "frobenius_norm", "model.layers.{layer}.mlp.up_proj.weight")
    wf.layer_step_map(run.results("activations"), "sink_mass")
    wf.heldout_loss_figure(run.results("loss"))
    wf.overlay({"a": wf.heldout_loss_figure(a.results("loss")), "b": wf.heldout_loss_figure(b.results("loss"))})

Each returns a plotly figure (or a pandas table); long series are thinned to a bounded number of points and
the figure's title says so. What the dashboard does to every figure over steps is here too: `log_step_axis(fig)`,
`mark_step(fig, step)` and `figure_data(fig)` (the points behind it, as its CSV download holds them); and how it
shows several runs: `overlay` (curves), `side_by_side` (maps, or their differences) and `tokens_axis`.
"""

from workbench.figures._common import figure_data, log_step_axis, mark_step, nearest_step
from workbench.figures.compare import compare_statistics, weight_distance_figure, weight_distances
from workbench.figures.maps import (
    cka_map,
    head_layer_map,
    layer_curves,
    layer_step_map,
    massive_dimensions,
    weight_curves,
    weight_kinds,
    weight_map,
)
from workbench.figures.overview import coverage, heldout_loss_figure, metrics_figure, run_card, run_table, smooth
from workbench.figures.probing import direction_cosines, direction_drift, probe_map, transfer_curves
from workbench.figures.results import results_figure, summary_figure
from workbench.figures.runs import overlay, run_labels, side_by_side, tokens_axis
from workbench.figures.scores import exposure_recall, fact_recall_map, item_count, rolling, score_curves
from workbench.figures.texts import (
    batch_documents,
    canary_map,
    document_hits,
    document_learned_html,
    document_loss_html,
    eval_documents,
    learned_steps,
    memorization_examples,
    seen_map,
)

__all__ = ["batch_documents", "canary_map", "cka_map", "compare_statistics", "coverage", "direction_cosines",
           "direction_drift", "document_hits", "exposure_recall", "fact_recall_map", "figure_data", "log_step_axis",
           "mark_step", "nearest_step", "overlay", "probe_map", "run_labels", "side_by_side", "tokens_axis", "results_figure", "rolling",
           "score_curves", "item_count", "transfer_curves",
           "document_learned_html", "document_loss_html", "eval_documents", "head_layer_map", "heldout_loss_figure",
           "layer_curves", "layer_step_map", "learned_steps", "massive_dimensions", "memorization_examples",
           "metrics_figure", "run_card", "run_table", "seen_map", "smooth", "summary_figure", "weight_curves", "weight_distance_figure",
           "weight_distances", "weight_kinds", "weight_map"]
