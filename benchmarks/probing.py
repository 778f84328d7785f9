"""Probes: the default fit (streamed statistics + closed-form ridge, every layer and task at once) against a loop
of scikit-learn `LogisticRegression` per (layer, task) on the same features and split.

    .venv/bin/python benchmarks/probing.py [--steps 600] [--tokens 12000] [--reps 3]

1. A run of the project's own model is trained here (d_model 256, 4 layers, 4 heads, vocab 2048, sequence 128,
   `--steps` steps on the synthetic corpus) and its last checkpoint probed for the `script` and `language` tasks
   on `--tokens` tokens of documents, split by document (60/20/20).
2. The residual streams of every layer (and the embeddings) are recorded once; both fits then read the same
   features: ours replays them through the probe's own streaming path (`Probe.fit` + `Probe.predict`: statistics,
   ridge for the default 7 λ, λ chosen on validation accuracy, predictions, scores), scikit-learn fits
   `LogisticRegression(max_iter=1000)` per (layer, task) on the training split and scores the test split.
   Reported: fit seconds per checkpoint (median of `--reps`), the ratio, and the largest test-accuracy difference.
3. The fit alone at the tiny and small presets (random-init models: the fit's cost does not depend on training),
   and the whole per-checkpoint cost (capture + fit) against the forward pass alone over the same rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TOML = """
[model]
vocab_size = 2048
hidden_size = 256
intermediate_size = 704
num_hidden_layers = 4
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 256

[train]
batch_size = 8
seq_len = 128
lr = 2e-3
warmup_steps = 50
early = false
"""


class Replay:
    """Records what the forward pass streams, then plays it back without the model."""

    def __init__(self, stream):
        self.stream, self.tape = stream, {}

    def record(self, model, ids, names, fn):
        key = ids.numpy().tobytes()
        seen = []
        self.stream(model, ids, names, lambda name, h: (seen.append((name, h.clone())), fn(name, h)))
        self.tape[key] = seen

    def play(self, model, ids, names, fn):
        for name, h in self.tape[ids.numpy().tobytes()]:
            fn(name, h)


def probe_once(sources, layers, seq_len, model):
    """The default fit of `probes` (ridge over its default λ grid) for one checkpoint, as `Probes.compute` runs it."""
    from probes.analysis import Probe, Probes

    probe = Probe(sources, layers, seq_len, batch_size=16)
    probe.fit(model, Probes.Params().lambdas, "ridge", 1.0)
    probe.predict(model)
    return probe.dataset()


def features(sources, layers, seq_len, model):
    """{source: (X [layer, example, d] float32, example order)} of every example, from the probe's own path."""
    from probes.analysis import Probe

    probe = Probe(sources, layers, seq_len, batch_size=16)
    out = {s.name: [[] for _ in range(layers)] for s in sources}

    def on_layer(name, index, layer, x):
        out[name][layer].append((index, x.float()))

    probe._examples(model, (0, 1, 2), on_layer)
    result = {}
    for name, per_layer in out.items():
        index = np.concatenate([i for i, _ in per_layer[0]])
        x = torch.stack([torch.cat([v for _, v in layer]) for layer in per_layer]).numpy()
        order = np.argsort(index)
        result[name] = x[:, order]
    return result


def sklearn_loop(sources, feats):
    from sklearn.linear_model import LogisticRegression

    acc = {}
    for source in sources:
        x = feats[source.name]
        train, test = source.split == 0, source.split == 2
        for name, task in source.tasks.items():
            for layer in range(x.shape[0]):
                clf = LogisticRegression(max_iter=1000).fit(x[layer, train], task.labels[train])
                acc[(name, layer)] = clf.score(x[layer, test], task.labels[test])
    return acc


def preset_model(name):
    from training.model import Llama
    from training.presets import preset

    model_cfg, train_cfg = preset(name)
    torch.manual_seed(0)
    return Llama(model_cfg).eval(), train_cfg.seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--tokens", type=int, default=12000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import workbench
    from probes import analysis as probe_analysis
    from probes.tasks import build
    from training.presets import load
    from training.trainer import Trainer
    from workbench.analysis import forward

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        toml = Path(tmp) / "probe.toml"
        toml.write_text(TOML)
        t0 = time.perf_counter()
        Trainer(*load(toml, max_steps=args.steps, every=args.steps), Path(tmp) / "run", progress=False).train()
        run = workbench.open(Path(tmp) / "run")
        print(f"trained d_model 256 x 4 layers for {args.steps} steps in {time.perf_counter() - t0:.0f} s")
        model = run.checkpoint(run.steps[-1]).model(dtype=torch.float32)
        seq_len = run.train_config["seq_len"]
        sources = build(run, ["script", "language"], {}, args.tokens, "last", 0, seq_len)
        n_tokens = sum(s.n_examples for s in sources)
        layers = model.config.num_hidden_layers + 1
        print(f"{n_tokens} probe tokens; split train/val/test {np.bincount(sources[0].split).tolist()} (by document)")

        replay = Replay(forward.stream)
        probe_analysis.forward.stream = replay.record
        t0 = time.perf_counter()
        probe_once(sources, layers, seq_len, model)
        capture_and_fit = time.perf_counter() - t0
        probe_analysis.forward.stream = replay.play
        ours_times, ds = [], None
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ds = probe_once(sources, layers, seq_len, model)
            ours_times.append(time.perf_counter() - t0)
        probe_analysis.forward.stream = replay.stream
        feats = features(sources, layers, seq_len, model)
        sk_times, sk = [], None
        for _ in range(args.reps):
            t0 = time.perf_counter()
            sk = sklearn_loop(sources, feats)
            sk_times.append(time.perf_counter() - t0)
        diff = max(abs(float(ds["accuracy"].sel(task=t, layer=l)) - a) for (t, l), a in sk.items())
        ours, theirs = statistics.median(ours_times), statistics.median(sk_times)
        print(f"\nfit, every layer and task, one checkpoint: ours {ours:.3f} s, scikit-learn loop {theirs:.2f} s: "
              f"{theirs / ours:.1f}x faster; largest test-accuracy difference {100 * diff:.2f} points")
        for (t, l), a in sorted(sk.items()):
            print(f"  {t:9} layer {l}: ours {float(ds['accuracy'].sel(task=t, layer=l)):.3f}  scikit-learn {a:.3f}")

        rows = [r for r in probe_analysis._rows(sources, (0, 1, 2), seq_len)[0]]
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(rows), 16):
                part = rows[i: i + 16]
                ids = torch.zeros(len(part), max(map(len, part)), dtype=torch.int64)
                for j, r in enumerate(part):
                    ids[j, : len(r)] = torch.as_tensor(r)
                model.hidden_states(ids)
        bare = time.perf_counter() - t0
        print(f"per checkpoint: capture + fit {capture_and_fit:.2f} s against the forward pass alone {bare:.2f} s "
              f"({capture_and_fit / bare:.2f}x)")

        for name in ("tiny", "small"):
            small_model, small_len = preset_model(name)
            vocab = small_model.config.vocab_size
            same = [dataclasses.replace(s, texts=[[t % vocab for t in text] for text in s.texts]) for s in sources]
            replay = Replay(forward.stream)
            probe_analysis.forward.stream = replay.record
            probe_once(same, small_model.config.num_hidden_layers + 1, min(small_len, 128), small_model)
            probe_analysis.forward.stream = replay.play
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                probe_once(same, small_model.config.num_hidden_layers + 1, min(small_len, 128), small_model)
                times.append(time.perf_counter() - t0)
            probe_analysis.forward.stream = replay.stream
            print(f"fit at the {name} preset (d_model {small_model.config.hidden_size}, "
                  f"{small_model.config.num_hidden_layers} layers): {statistics.median(times):.3f} s per checkpoint")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
