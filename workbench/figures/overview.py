"""A run at a glance: its card, training curves, held-out loss, and which analyses are stored for which steps."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from workbench.figures._common import lines, steps_of
from workbench.figures.runs import run_labels

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from workbench.api import Run

METRICS = ("loss", "lr", "grad_norm", "tokens_per_s")


def run_table(runs: list["Run"]) -> "pd.DataFrame":
    """The open runs side by side: name, last step, checkpoints, and every model or training setting in which
    they differ (a column per setting; none when there is one run or they agree)."""
    import pandas as pd

    configs = [{**{f"model.{k}": v for k, v in r.model_config.items()},
                **{f"train.{k}": v for k, v in (r.train_config or {}).items()}} for r in runs]
    keys = sorted(set().union(*configs))
    differ = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    labels = run_labels([r.location for r in runs])
    rows = [{"run": labels[r.location], "location": r.location,
             "last step": r.steps[-1] if r.steps else None, "checkpoints": len(r.steps),
             **{k: c.get(k) for k in differ}} for r, c in zip(runs, configs)]
    return pd.DataFrame(rows)


def run_card(run: "Run") -> dict:
    """What the run is: model, training, steps, parameters, bytes, tokenizer, code version."""
    from workbench.store.storage import bytes_on_disk

    config = run.model_config
    steps = run.steps
    return {
        "location": run.location,
        "model": config.get("model_type") or "unknown",
        "layers": config.get("num_hidden_layers") or config.get("n_layer"),
        "d_model": config.get("hidden_size") or config.get("n_embd"),
        "heads": config.get("num_attention_heads") or config.get("n_head"),
        "checkpoints": len(steps),
        "steps": f"{steps[0]}..{steps[-1]}" if steps else "none",
        "parameters": sum(math.prod(a.shape[1:]) for a in run.parameter_arrays.values()),
        "bytes on disk": bytes_on_disk(run.location),
        "tokenizer": f"vocab {run.tokenizer.get_vocab_size()}" if run.tokenizer is not None else "none",
        "trained by": "the workbench" if (run.train_config or {}).get("max_steps") else "imported",
        "code version": run.code_version,
    }


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average (weight 0: the raw values): over the finite values,
    ema_k = weight · ema_(k-1) + (1 − weight) · v_k from ema_0 = 0, divided by 1 − weight^k; a value that is not
    finite keeps the last average (NaN before the first)."""
    from scipy.signal import lfilter

    values = np.asarray(values, dtype=float)
    if weight <= 0 or values.size == 0:
        return values
    finite = np.isfinite(values)
    ema = lfilter([1 - weight], [1, -weight], values[finite])  # the recursion, in C: 300,000 steps in ms
    debiased = ema / (1 - weight ** np.arange(1, ema.size + 1))
    seen = np.cumsum(finite)  # finite values up to each point
    return np.where(seen > 0, np.r_[np.nan, debiased][seen], np.nan)


def metrics_figure(metrics: dict[str, "pd.DataFrame"], column: str, smoothing: float = 0.0):
    """One training metric (`loss`, `lr`, `grad_norm`, `tokens_per_s`, ...) over steps, a line per run
    ({run label: `Run.metrics()`}), smoothed by a debiased moving average."""
    series = {label: (df.index.to_numpy(), smooth(df[column].to_numpy(), smoothing))
              for label, df in metrics.items() if column in df}
    note = f" (smoothed {smoothing:g})" if smoothing else ""
    fig = lines(series, f"training {column}{note}", column)
    return fig.for_each_trace(lambda t: t.update(legendgroup=t.name))  # a trace per run: its run, for a tokens axis


def heldout_loss_figure(ds: "xr.Dataset"):
    """Held-out loss per domain over steps (`run.results("loss")`), a line per domain."""
    steps = steps_of(ds)
    return lines({str(d): (steps, ds["loss"].sel(domain=d).values) for d in ds["domain"].values},
                 "held-out loss per domain", "loss (nats)")


def coverage(run: "Run", names: list[str] | None = None) -> "pd.DataFrame":
    """Per analysis (registered or stored): steps stored, steps missing, and the `wb analyze` command that
    computes the missing ones."""
    import pandas as pd

    from workbench.analysis import registry

    stored = run.stored_results()
    steps = run.steps
    rows = []
    for name in names or sorted(set(registry()) | set(stored)):
        have = stored[name].steps if name in stored else []
        missing = [s for s in steps if s not in set(have)]
        rows.append({"analysis": name, "stored": len(have), "missing": len(missing),
                     "command": analyze_command(run.location, name, missing, len(steps)) if missing else ""})
    return pd.DataFrame(rows)


def analyze_command(location: str, name: str, missing: list[int], n_steps: int) -> str:
    """The `wb analyze` command that computes `missing` steps of `name`."""
    steps = "" if len(missing) == n_steps else f" --steps {','.join(map(str, missing))}"
    return f"wb analyze {location} --only {name}{steps}"
