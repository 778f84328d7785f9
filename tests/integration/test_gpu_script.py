"""benchmarks/gpu.sh, the one prepared script of the GPU checks, stops at once and says why where there is no
CUDA device (as on every CI machine); the CUDA tests it runs are skipped here, not failed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_fails_fast_and_clearly_without_cuda(tmp_path):
    assert not torch.cuda.is_available()
    start = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True,
                          env={"OUT": str(tmp_path), "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 30


def test_the_cuda_tests_are_skipped_without_cuda():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "gpu")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "skipped" in proc.stdout and "passed" not in proc.stdout and "failed" not in proc.stdout
