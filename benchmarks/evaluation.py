"""Evaluation: the native multiple-choice scorer against lm-evaluation-harness on the same model and items.

    .venv/bin/python benchmarks/evaluation.py [--items 600] [--steps 300] [--reps 3]

The `demo` preset is trained here for `--steps` steps; its last checkpoint is scored on one multiple-choice task
of `--items` items made from the run's own documents: the context is a document's first sentence or two (40–120
characters), the gold choice the next 24 characters, the three others the 24 characters at the same place in
three other documents of the same language. Both score the same items with the same weights (float32, CPU):
- native: `workbench.analyses.evaluation.Scorer` (the context encoded once into a KV cache, the four choices
  batched on top of it), item after item, as the `evaluation` analysis runs them;
- lm-evaluation-harness: `simple_evaluate` on `HFLM` over the checkpoint's transformers model (SDPA attention,
  batch size 16), the same items as a local YAML task over a local JSONL file (`target_delimiter: ""`).
Times are medians of `--reps`; per-item choices are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

def make_items(run, n: int, seed: int = 0) -> list[dict]:
    docs = run.documents()
    docs = docs[docs["domain"].isin(["en", "ja"])]
    by_lang = {lang: rows["text"].tolist() for lang, rows in docs.groupby("language")}
    rng = random.Random(seed)
    items = []
    while len(items) < n:
        lang = rng.choice(sorted(by_lang))
        texts = by_lang[lang]
        text = rng.choice(texts)
        cut = rng.randint(40, 120)
        if len(text) < cut + 24:
            continue
        others = [t for t in rng.sample(texts, 8) if len(t) >= cut + 24 and t != text][:3]
        if len(others) < 3:
            continue
        choices = [text[cut: cut + 24]] + [t[cut: cut + 24] for t in others]
        rng.shuffle(choices)
        items.append({"question": text[:cut], "choices": choices, "label": choices.index(text[cut: cut + 24])})
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import workbench
    from training.presets import load
    from training.trainer import Trainer
    from workbench.analyses.evaluation import Scorer, harness
    from workbench.analyses.evaluation.tasks import read_file

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Trainer(*load(None, "demo", max_steps=args.steps, every=args.steps), tmp / "run", progress=False).train()
        run = workbench.open(tmp / "run")
        checkpoint = run.checkpoint(run.steps[-1])
        data = tmp / "bench_mc.jsonl"
        data.write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in make_items(run, args.items)) + "\n")
        (tmp / "tasks").mkdir()
        (tmp / "tasks" / "bench_mc.yaml").write_text(harness.questions_task("bench_mc", data))
        items = read_file(data, 0, None).choices
        scorer = Scorer(checkpoint.model(dtype=torch.float32), run)
        native, theirs = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ours = [scorer.choice(i)["choice"] for i in items]
            native.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, choices = harness.run(checkpoint, ["bench_mc"], str(tmp / "tasks"))
            theirs.append(time.perf_counter() - t0)
        same = sum(a == b for a, b in zip(ours, choices["bench_mc"]))
        accuracy = sum(c == i.gold for c, i in zip(ours, items)) / len(items)
    n, h = statistics.median(native), statistics.median(theirs)
    print(f"{len(items)} items x 4 choices, demo preset after {args.steps} steps (accuracy {accuracy:.3f})")
    print(f"native scorer {n:.2f} s, lm-evaluation-harness {h:.2f} s: {h / n:.2f}x faster (medians of {args.reps}); "
          f"identical per-item choices: {same} of {len(items)}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
