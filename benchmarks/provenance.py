"""Provenance and one commit per analysis: what they cost `wb analyze`, A/B against the engine before them.

    git worktree add /tmp/before 3afe999 && touch /tmp/before/workbench/analyses/__init__.py
    .venv/bin/python benchmarks/provenance.py --before /tmp/before [--reps 2] [--steps 1000] [--every 100]

(The empty `workbench/analyses` package lets the older code load the installed entry points, which name it; that
code registers its built-in analyses itself.) Trains the demo preset once (`--steps`, a checkpoint every
`--every` plus the early log-spaced ones) into a temporary folder; then each rep, for each code version in turn
(`--before`, then this checkout), copies that run and times in a fresh process with that code first on the path:
- analyze: `wb analyze RUN --workers 0`, every built-in analysis at every step, computed and committed;
- re-run: the same command again, which finds nothing to compute: the plan alone (with provenance it reads the
  checkpoint log and fingerprints every table the analyses read, and compares each stored step).
Medians over the reps; ratio = before / this (> 1: this checkout is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter

ROOT = Path(__file__).resolve().parents[1]
WB = "import sys; from workbench.cli import app; sys.argv[0] = 'wb'; app()"


def wb(code: Path, *args: str) -> float:
    """Seconds `wb ARGS` takes in a fresh process running the code at `code`."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = perf_counter()
    subprocess.run([sys.executable, "-c", WB, *args], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    versions = {"before": args.before.resolve(), "this": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        wb(ROOT, "train", "--preset", "demo", "--max-steps", str(args.steps), "--every", str(args.every),
           "--out", str(base))
        times: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.reps):
            for name, code in versions.items():
                run = Path(tmp) / f"{name}-{rep}"
                shutil.copytree(base, run)
                for what in ("analyze", "re-run"):
                    times.setdefault((name, what), []).append(wb(code, "analyze", str(run), "--workers", "0"))
                shutil.rmtree(run)
                print(f"rep {rep + 1} {name}: " + ", ".join(f"{w} {times[name, w][-1]:.1f} s"
                                                            for w in ("analyze", "re-run")), flush=True)
    print(f"\n| step | before (s) | this (s) | before/this |\n|---|---:|---:|---:|")
    for what in ("analyze", "re-run"):
        b, t = (statistics.median(times[v, what]) for v in ("before", "this"))
        print(f"| {what} | {b:.2f} | {t:.2f} | {b / t:.2f} |")


if __name__ == "__main__":
    main()
