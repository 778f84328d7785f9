"""The figure of any analysis' stored results, as `wb results --plot` writes it and the dashboard's generic
page shows it: the analysis' own `figure` (`Analysis.figure`; by default its summary table as lines over the
steps, or bars at one step)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.analysis.summary import summary_figure

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["results_figure", "summary_figure"]


def results_figure(name: str, ds: "xr.Dataset", step: int | None = None, title: str = ""):
    """The figure of analysis `name`'s results `ds` (at `step`, or over the steps); an analysis not installed
    here gets the default figure."""
    from workbench.analysis import Analysis, provenance, registry

    return registry().get(name, Analysis).figure(provenance.without(ds), step, title)
