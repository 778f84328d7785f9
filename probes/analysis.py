"""`probes`: what every layer linearly encodes at every checkpoint — all layers and tasks fitted at once.

Per checkpoint: one streaming forward pass over the training-split texts of every task (`probes.tasks`) feeds
per-layer sufficient statistics (`probes.fit.CrossMoments`: the centred Gram matrix and its cross term with
every task's one-hot label columns, control tasks included); closed-form ridge is solved for every layer, task
and λ at once; a second pass over the validation and test texts keeps only predictions. λ is chosen per (layer,
task) on validation accuracy. No activation is held (with `fit="logistic"`, the reference fit, the training
features are).

Results, dims `step, layer, task` (`layer` 0 is the embeddings, layer l the residual stream after block l):
`accuracy`, `macro_f1`, `control_accuracy`, `selectivity` (accuracy − control accuracy), `transfer_accuracy`
(fact tasks: the probe scored on the other language's test examples), `ridge_lambda`; per task `majority` and
`transfer_majority` (the training majority class's accuracy: the baselines) and `n_train`/`n_val`/`n_test`; `direction` [layer, task, class, dim] (float16): the
probe's weights, whose cosine across checkpoints is the drift of what a layer encodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from probes.fit import CrossMoments, accuracy, logistic, macro_f1, ridge
from probes.tasks import BUILTIN, FileTask, Source, build, read_file
from workbench.analysis import forward
from workbench.analysis.base import Analysis, StepContext
from workbench.analysis.registry import register
from workbench.errors import UsageError

if TYPE_CHECKING:
    import torch

LAYER_HOOKS = ("blocks.0.hook_resid_pre", "blocks.{l}.hook_resid_post")  # the embeddings, then every block's output


@register
class Probes(Analysis):
    name = "probes"
    kind = "forward"
    reads_eval_set = False  # its texts are the tasks'
    reads_tables = ("data/documents", "data/facts")  # the built-in tasks' texts and labels
    dims = ("layer", "task", "class", "dim")
    description = "linear probes of every layer for every task, with control tasks (see probes/analysis.py)"
    title, page, page_order = "Probes", "apps.dashboard.views.probes", 60
    summary_vars = ("accuracy", "selectivity", "transfer_accuracy")

    @dataclass(frozen=True)
    class Params:
        tasks: tuple[str, ...] = ()  # built-in names (script, language, fact) or .jsonl paths; () = every built-in
        fit: str = "ridge"  # or "logistic" (the reference fit: multinomial, L2, warm-started from ridge)
        lambdas: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
        c: float = 1.0  # logistic: inverse L2 strength, as scikit-learn's C
        max_tokens: int = 8192  # tokens of the script and language tasks
        pool: str = "last"  # sequence-level file tasks: "last" token or "mean" over the text
        seed: int = 0  # the split, the document sample and the control labels
        batch_size: int = 16
        seq_len: int | None = None  # row length; default: the run's training seq_len

    @classmethod
    def summary(cls, ds: xr.Dataset, step: int | None = None):
        """Per step each task's best layer's accuracy and selectivity; with `step`, every layer and task."""
        if step is not None:
            return ds[["accuracy", "control_accuracy", "selectivity", "transfer_accuracy"]].sel(step=step) \
                .to_dataframe()[["accuracy", "control_accuracy", "selectivity", "transfer_accuracy"]]
        best = ds[["accuracy", "selectivity"]].max("layer").to_dataframe()[["accuracy", "selectivity"]]
        table = best.unstack("task")
        table.columns = [f"{var}[{task}]" for var, task in table.columns]
        return table

    def __init__(self, **params):
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        super().__init__(**params)
        p = self.params
        if p.fit not in ("ridge", "logistic"):
            raise UsageError(f"probes: fit must be ridge or logistic, got {p.fit!r}")
        if p.pool not in ("last", "mean"):
            raise UsageError(f"probes: pool must be last or mean, got {p.pool!r}")
        if not p.lambdas or min(p.lambdas) <= 0 or p.c <= 0 or p.max_tokens < 1 or p.batch_size < 1:
            raise UsageError("probes: lambdas and c must be positive, max_tokens and batch_size at least 1")
        self.files: dict[str, FileTask] = {}
        for task in p.tasks:
            if task not in BUILTIN:
                if not task.endswith(".jsonl") and not Path(task).exists():
                    raise UsageError(f"unknown probe task {task!r}; built-in tasks: {', '.join(BUILTIN)}, or a "
                                     "path to a .jsonl file")
                file = read_file(task)  # read here, in the driver: the workers need not see the file
                self.files[file.name] = file

    def inputs(self, eval_set) -> dict[str, str]:
        """Each task file's content fingerprint: the steps probed on a file that changed since are stale."""
        return {f"file:{n}": f.fingerprint for n, f in sorted(self.files.items())}

    def task_names(self, run) -> list[str]:
        """The tasks to probe: built-ins expanded (`fact` is `fact_en` and `fact_ja`), files by name."""
        asked = self.params.tasks or [t for t in BUILTIN if t != "fact" or run.table("data/facts") is not None]
        names = []
        for task in asked:
            if task == "fact":
                names += ["fact_en", "fact_ja"]
            elif task in BUILTIN:
                names.append(task)
            else:
                names.append(Path(task).stem)
        return list(dict.fromkeys(names))

    def check(self, run, eval_set) -> None:
        from workbench.errors import MissingData

        builtin = [t for t in self.task_names(run) if t not in self.files]
        if builtin and run.table("data/documents") is None:
            raise MissingData(f"probes: the built-in tasks {', '.join(builtin)} read the training corpus, which "
                              f"{run.location} does not store (an imported run?); give a task file: "
                              "--tasks path/to/task.jsonl")

    def compute(self, ctx: StepContext) -> xr.Dataset:
        from workbench.models.capture import n_layers

        p = self.params
        seq_len = forward.seq_len(ctx, p.seq_len)
        names = self.task_names(ctx.run)
        sources = ctx.cached(("probes.sources", p, tuple(sorted(self.inputs(None).items()))),
                             lambda: build(ctx.run, names, self.files, p.max_tokens, p.pool, p.seed, seq_len))
        model = ctx.model(streamable=True)
        layers = n_layers(model) + 1
        probe = Probe(sources, layers, seq_len, p.batch_size)
        probe.fit(model, p.lambdas, p.fit, p.c)
        probe.predict(model)
        return probe.dataset()


@dataclass(frozen=True)
class _Rows:
    """A batch of rows of the probing texts: `ids` [row, pos], its first row's index, and where the examples of
    each source lie in it (`_in_rows`)."""

    ids: torch.Tensor
    first_row: int
    examples: dict


class Probe:
    """One checkpoint's probes: `fit` streams the training texts, `predict` the validation and test texts,
    `dataset` reports."""

    def __init__(self, sources: list[Source], layers: int, seq_len: int, batch_size: int):
        self.sources, self.layers, self.seq_len, self.batch_size = sources, layers, seq_len, batch_size
        self.tasks = {name: (s, t) for s in sources for name, t in s.tasks.items()}
        self.columns = {s.name: _columns(s) for s in sources}  # source -> (Y [example, column], {task: slices})

    def _examples(self, model, splits: tuple[int, ...], on_layer) -> None:
        """Run the texts holding examples of `splits`; `on_layer(source, example indices, layer, X)` gets each
        layer's features `[example, d_model]` (float64) of the examples in each batch."""
        import torch

        rows, placed = _rows(self.sources, splits, self.seq_len)
        batches = []
        for r0 in range(0, len(rows), self.batch_size):
            part = rows[r0: r0 + self.batch_size]
            ids = torch.zeros(len(part), max(len(r) for r in part), dtype=torch.int64)  # right-padded (causal)
            for i, r in enumerate(part):
                ids[i, : len(r)] = torch.as_tensor(r)
            batches.append(_Rows(ids, r0, {name: _in_rows(ex, r0, r0 + len(part)) for name, ex in placed.items()}))

        def fn(b: _Rows, hook: str, h: torch.Tensor) -> None:
            layer = 0 if hook == LAYER_HOOKS[0] else forward.layer_of(hook) + 1
            for name, (index, row, start, end) in b.examples.items():
                if len(index):
                    on_layer(name, index, layer, _pool(h, row - b.first_row, start, end))

        forward.stream_batches(model, batches, LAYER_HOOKS, fn)

    def fit(self, model, lambdas, method: str, c: float) -> None:
        import torch

        stats = {s.name: [CrossMoments() for _ in range(self.layers)] for s in self.sources}
        held = {s.name: [[] for _ in range(self.layers)] for s in self.sources} if method == "logistic" else None

        def on_layer(name, index, layer, x):
            y = torch.as_tensor(self.columns[name][0][index])
            stats[name][layer].update(x[None], y)
            if held is not None:
                held[name][layer].append((index, x))

        self._examples(model, (0,), on_layer)
        self.lambdas = list(lambdas)
        self.weights = {}  # source -> (W [λ, layer, d, column], b [λ, layer, column])
        for name, per_layer in stats.items():
            self.weights[name] = ridge(_stack(per_layer), self.lambdas)
        if held is not None:
            self._logistic(held, c)

    def _logistic(self, held, c: float) -> None:
        """Replace each task's ridge weights by the logistic fit's (one "λ": the reference fit has its own C)."""
        import torch

        fitted = {}
        for name, per_layer in held.items():
            source = next(s for s in self.sources if s.name == name)
            index = np.concatenate([i for i, _ in per_layer[0]])
            x = torch.stack([torch.cat([v for _, v in layer]) for layer in per_layer])  # [layer, example, d]
            w_ridge, b_ridge = self.weights[name]
            w, b = w_ridge[len(self.lambdas) // 2].clone(), b_ridge[len(self.lambdas) // 2].clone()
            _, blocks = self.columns[name]
            for task in source.tasks.values():
                for cols, labels in ((blocks[task.name][0], task.labels), (blocks[task.name][1], task.control)):
                    init = (w[:, :, cols], b[:, cols])
                    w[:, :, cols], b[:, cols] = logistic(x, torch.as_tensor(labels[index]), len(task.classes), c, init)
            fitted[name] = (w[None], b[None])
        self.weights, self.lambdas = fitted, [float("nan")]

    def predict(self, model) -> None:
        """Predictions (class indices) of every task, control task and transfer, for every λ, layer and
        validation/test example: `self.preds[(task, kind)]` `[λ, layer, example]` (-1 where not predicted)."""
        shape = (len(self.lambdas), self.layers)
        self.preds = {}
        for name, (source, task) in self.tasks.items():
            for kind in ("task", "control"):
                self.preds[(name, kind)] = np.full((*shape, source.n_examples), -1, dtype=np.int64)
            if task.transfer in self.tasks:
                self.preds[(name, "transfer")] = np.full((*shape, self.tasks[task.transfer][0].n_examples), -1, dtype=np.int64)

        def on_layer(name, index, layer, x):
            w, b = self.weights[name]
            scores = x[None] @ w[:, layer] + b[:, layer, None]  # [λ, example, column]
            _, blocks = self.columns[name]
            for task_name, (task_cols, control_cols) in blocks.items():
                self.preds[(task_name, "task")][:, layer, index] = scores[..., task_cols].argmax(-1).numpy()
                self.preds[(task_name, "control")][:, layer, index] = scores[..., control_cols].argmax(-1).numpy()
            for other, (source, task) in self.tasks.items():  # probes of other sources scored on these examples
                if task.transfer in self.columns[name][1]:
                    w2, b2 = self.weights[source.name]
                    cols = self.columns[source.name][1][other][0]
                    s2 = x[None] @ w2[:, layer][..., cols] + b2[:, layer, None][..., cols]
                    self.preds[(other, "transfer")][:, layer, index] = s2.argmax(-1).numpy()

        self._examples(model, (1, 2), on_layer)

    def dataset(self) -> xr.Dataset:
        names = list(self.tasks)
        L, T = self.layers, len(names)
        out = {k: np.full((L, T), np.nan) for k in ("accuracy", "macro_f1", "control_accuracy", "transfer_accuracy",
                                                    "ridge_lambda")}
        majority, transfer_majority = np.full(T, np.nan), np.full(T, np.nan)
        counts = np.zeros((3, T), dtype=np.int64)
        n_classes = max(len(t.classes) for _, t in self.tasks.values())
        d_model = next(iter(self.weights.values()))[0].shape[2]
        direction = np.full((L, T, n_classes, d_model), np.nan, dtype=np.float16)
        class_names = np.full((T, n_classes), "", dtype=object)
        for j, name in enumerate(names):
            source, task = self.tasks[name]
            split = source.split
            val, test = split == 1, split == 2
            counts[:, j] = [(split == s).sum() for s in range(3)]
            class_names[j, : len(task.classes)] = task.classes
            train_labels = task.labels[split == 0]
            if len(train_labels) and test.any():
                majority[j] = accuracy(np.full(test.sum(), np.bincount(train_labels).argmax()), task.labels[test])
            if (name, "transfer") in self.preds and len(train_labels):
                other_source, other = self.tasks[task.transfer]
                target = other.labels[other_source.split == 2]
                transfer_majority[j] = accuracy(np.full(len(target), np.bincount(train_labels).argmax()), target)
            best = _choose(self.preds[(name, "task")][:, :, val], task.labels[val])  # [layer] λ index
            best_control = _choose(self.preds[(name, "control")][:, :, val], task.control[val])
            cols = self.columns[source.name][1][name][0]
            w = self.weights[source.name][0]
            for layer in range(L):
                pred = self.preds[(name, "task")][best[layer], layer, test]
                out["accuracy"][layer, j] = accuracy(pred, task.labels[test])
                out["macro_f1"][layer, j] = macro_f1(pred, task.labels[test], len(task.classes))
                out["control_accuracy"][layer, j] = accuracy(
                    self.preds[(name, "control")][best_control[layer], layer, test], task.control[test])
                out["ridge_lambda"][layer, j] = self.lambdas[best[layer]]
                direction[layer, j, : len(task.classes)] = w[best[layer], layer][:, cols].T.numpy().astype(np.float16)
                if (name, "transfer") in self.preds:
                    other_source, other = self.tasks[task.transfer]
                    other_test = other_source.split == 2
                    out["transfer_accuracy"][layer, j] = accuracy(
                        self.preds[(name, "transfer")][best[layer], layer, other_test], other.labels[other_test])
        lt = ("layer", "task")
        return xr.Dataset(
            {"accuracy": (lt, out["accuracy"], {"description": "test accuracy of the probe", "units": "1"}),
             "macro_f1": (lt, out["macro_f1"], {"description": "test macro-F1 of the probe", "units": "1"}),
             "control_accuracy": (lt, out["control_accuracy"], {
                 "description": "test accuracy of the same probe on the control task (labels drawn per token type, "
                                "Hewitt & Liang 2019)", "units": "1"}),
             "selectivity": (lt, out["accuracy"] - out["control_accuracy"], {
                 "description": "accuracy − control accuracy", "units": "1"}),
             "transfer_accuracy": (lt, out["transfer_accuracy"], {
                 "description": "accuracy on the test examples of the transfer task (the other language), NaN for "
                                "tasks without one", "units": "1"}),
             "ridge_lambda": (lt, out["ridge_lambda"], {
                 "description": "ridge strength chosen on validation accuracy (λ·n·‖W‖²; NaN for logistic fits)"}),
             "majority": ("task", majority, {"description": "test accuracy of the training majority class", "units": "1"}),
             "transfer_majority": ("task", transfer_majority, {
                 "description": "the training majority class's accuracy on the transfer task's test examples", "units": "1"}),
             "n_train": ("task", counts[0], {"description": "training examples", "units": "examples"}),
             "n_val": ("task", counts[1], {"description": "validation examples", "units": "examples"}),
             "n_test": ("task", counts[2], {"description": "test examples", "units": "examples"}),
             "direction": (("layer", "task", "class", "dim"), direction, {
                 "description": "probe weights per class (float16; NaN for classes a task does not have)"})},
            coords={"layer": np.arange(L), "task": np.array(names, dtype=object), "class": np.arange(n_classes),
                    "class_name": (("task", "class"), class_names),
                    "transfer_task": ("task", np.array([self.tasks[n][1].transfer or "" for n in names], dtype=object))})


def _columns(source: Source) -> tuple[np.ndarray, dict[str, tuple[slice, slice]]]:
    """One-hot label columns of every task of `source`, then its control task's: (Y, {task: (cols, control cols)})."""
    blocks, parts, at = {}, [], 0
    for name, task in source.tasks.items():
        k = len(task.classes)
        eye = np.eye(k)
        parts += [eye[task.labels], eye[task.control]]
        blocks[name] = (slice(at, at + k), slice(at + k, at + 2 * k))
        at += 2 * k
    return np.concatenate(parts, axis=1), blocks


def _rows(sources: list[Source], splits: tuple[int, ...], seq_len: int):
    """The rows (token ids, at most `seq_len` long) holding the examples of `splits`, and per source the placed
    examples: (example index, row, first column, end column), sorted by row."""
    rows, placed = [], {}
    for source in sources:
        chosen = np.flatnonzero(np.isin(source.split, splits))
        texts = np.unique(source.example_text[chosen])
        first_row = {}
        for t in texts:
            first_row[t] = len(rows)
            ids = source.texts[t]
            rows += [ids[i: i + seq_len] for i in range(0, len(ids), seq_len)]
        text = source.example_text[chosen]
        chunk = (source.example_end[chosen] - 1) // seq_len
        row = np.array([first_row[t] for t in text], dtype=np.int64) + chunk
        start = source.example_start[chosen] - chunk * seq_len
        end = source.example_end[chosen] - chunk * seq_len
        order = np.argsort(row, kind="stable")
        placed[source.name] = (chosen[order], row[order], np.maximum(start[order], 0), end[order])
    return rows, placed


def _in_rows(placed, r0: int, r1: int):
    index, row, start, end = placed
    a, b = np.searchsorted(row, [r0, r1])
    return index[a:b], row[a:b], start[a:b], end[a:b]


def _pool(h: torch.Tensor, row: np.ndarray, start: np.ndarray, end: np.ndarray) -> torch.Tensor:
    """Each example's feature: the mean of `h` `[batch, pos, d]` over its columns [start, end) of its row."""
    import torch

    row_t, end_t = torch.as_tensor(row, device=h.device), torch.as_tensor(end, device=h.device)
    if np.all(end - start == 1):
        return h[row_t, end_t - 1].double().cpu()
    cs = torch.nn.functional.pad(h.double().cumsum(1), (0, 0, 1, 0))  # [batch, pos + 1, d]
    start_t = torch.as_tensor(start, device=h.device)
    return ((cs[row_t, end_t] - cs[row_t, start_t]) / (end_t - start_t)[:, None].double()).cpu()


def _stack(per_layer: list[CrossMoments]) -> CrossMoments:
    import torch

    out = CrossMoments()
    out.n = per_layer[0].n
    out.mean_x = torch.cat([s.mean_x for s in per_layer])
    out.cxx = torch.cat([s.cxx for s in per_layer])
    out.cxy = torch.cat([s.cxy for s in per_layer])
    out.mean_y = per_layer[0].mean_y
    return out


def _choose(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per layer, the λ index of the best validation accuracy (`preds` [λ, layer, example]); the strongest λ
    among equals."""
    acc = (preds == labels).mean(-1) if labels.size else np.zeros(preds.shape[:2])  # [λ, layer]
    return (len(acc) - 1) - np.argmax(acc[::-1], axis=0)
