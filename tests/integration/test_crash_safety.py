"""Crash safety: a writer SIGKILLed at random moments never leaves a half-written checkpoint visible.

A child process writes 20 checkpoints (parameters and optimizer state with distinct, seeded values per
step). The parent kills it at random moments several times, restarting a writer each time that goes on with
the steps not yet visible, and after every kill checks that the run opens and that every visible step is
bit-exact. Meanwhile a reader thread polls the run (refresh, read every visible step) and records anything
that is not a whole, exact checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import workbench

SEED = 20240601
STEPS = [50 * i for i in range(20)]
KILLS = 5

WRITER_SCRIPT = textwrap.dedent(
    '''
    """Writes the steps given on the command line that the run does not show yet, in that order."""
    import json
    import sys

    import torch


    def state_for(step, shapes):
        """Deterministic parameters and optimizer state of `step`: distinct values for every step."""
        g = torch.Generator().manual_seed(step)
        params = {n: torch.randn(s, generator=g) for n, s in sorted(shapes.items())}
        opt = {n: {"exp_avg": torch.randn(s, generator=g), "exp_avg_sq": torch.rand(s, generator=g)}
               for n, s in sorted(shapes.items())}
        return params, opt


    def main():
        run_path, shapes_path, order = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
        with open(shapes_path) as f:
            shapes = {n: tuple(s) for n, s in json.load(f).items()}
        import workbench

        writer = workbench.RunWriter(run_path)
        visible = set(workbench.open(run_path).steps)
        print("ready", flush=True)
        for step in order:
            if step in visible:
                continue
            params, opt = state_for(step, shapes)
            writer.write_checkpoint(step, params, optimizer_state=opt)
            print(f"wrote {step}", flush=True)
        print("done", flush=True)


    if __name__ == "__main__":
        main()
    '''
)


class Writer:
    """A writer child process and the lines it prints."""

    def __init__(self, script: Path, run: Path, shapes: Path, order: list[int], log: Path):
        self.log = log
        self.stderr = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(run), str(shapes), ",".join(map(str, order))],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def wait_for(self, predicate, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"writer printed nothing expected within {timeout}s; stderr:\n{self.errors()}")
            self.seen.append(line)
            if line == "<eof>" or predicate(line):
                return line

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.stderr.close()

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.stderr.close()
        return rc

    def errors(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _load_state_for(script: Path):
    spec = importlib.util.spec_from_file_location("crash_writer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.state_for


class Expected:
    """Expected tensors per step, computed in this process with the writer's own seeding."""

    def __init__(self, state_for, shapes):
        self.state_for, self.shapes, self.cache = state_for, shapes, {}
        self.lock = threading.Lock()

    def __call__(self, step):
        with self.lock:
            if step not in self.cache:
                self.cache[step] = self.state_for(step, self.shapes)
            return self.cache[step]


def check_step(run, step: int, expected: Expected, optimizer: bool = True) -> list[str]:
    """Problems with `step` in `run` (empty when it reads back whole and bit-exact)."""
    params, opt = expected(step)
    problems = []
    got = run.checkpoint(step).state_dict()
    if sorted(got) != sorted(params):
        problems.append(f"step {step}: parameters {len(got)} names, expected {len(params)}")
    for name, want in params.items():
        g = got.get(name)
        if g is None or g.dtype != want.dtype or g.shape != want.shape or not torch.equal(g, want):
            problems.append(f"step {step}: {name} differs from what was written")
    if optimizer:
        got_opt = run.checkpoint(step).optimizer_state() or {}
        if sorted(got_opt) != sorted(opt):
            problems.append(f"step {step}: optimizer state for {len(got_opt)} parameters, expected {len(opt)}")
        for name, slots in opt.items():
            for slot, want in slots.items():
                g = got_opt.get(name, {}).get(slot)
                if g is None or g.shape != want.shape or not torch.equal(g, want):
                    problems.append(f"step {step}: optimizer {name}/{slot} differs from what was written")
    return problems[:5]


class Reader(threading.Thread):
    """Polls the run while writers run: refresh, then read every visible step."""

    def __init__(self, path: Path, expected: Expected, order: list[int]):
        super().__init__(daemon=True)
        self.path, self.expected, self.order = path, expected, order
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.observed: list[tuple[int, ...]] = []
        self.polls = 0

    def run(self):
        run, verified_opt = None, set()
        while not self.stop.is_set():
            try:
                run = workbench.open(self.path) if run is None else run.refresh()
                steps = run.steps
                if set(steps) != set(self.order[: len(steps)]):
                    self.problems.append(f"visible steps {steps} are not a prefix of the write order")
                for step in steps:
                    # Parameters of every visible step on every poll; optimizer state once per step.
                    self.problems += check_step(run, step, self.expected, optimizer=step not in verified_opt)
                    verified_opt.add(step)
                self.observed.append(tuple(steps))
                self.polls += 1
            except Exception as e:  # any failure to read a visible step is a finding
                self.problems.append(f"reader: {type(e).__name__}: {e}")
                run = None
            time.sleep(0.01)


@pytest.fixture(scope="module")
def crash_scenario(tmp_path_factory, tiny_config):
    """Run the kill/restart scenario once; the tests below check what it recorded."""
    import transformers

    tmp = tmp_path_factory.mktemp("crash")
    rng = random.Random(SEED)
    order = rng.sample(STEPS, len(STEPS))  # written out of step order on purpose

    with torch.device("meta"):
        shapes = {n: list(t.shape) for n, t in transformers.LlamaForCausalLM(tiny_config).state_dict().items()}
    shapes_path = tmp / "shapes.json"
    shapes_path.write_text(json.dumps(shapes))
    script = tmp / "writer.py"
    script.write_text(WRITER_SCRIPT)
    expected = Expected(_load_state_for(script), {n: tuple(s) for n, s in shapes.items()})

    path = tmp / "run"
    # Without `model_type` the writer skips the check against transformers' model (tested elsewhere), so a
    # restarted writer does not spend seconds importing the HF LLaMA modules before it writes.
    model_config = {k: v for k, v in tiny_config.to_dict().items() if k != "model_type"}
    workbench.create(path, model_config=model_config)

    reader = Reader(path, expected, order)
    reader.start()
    after_kill: list[dict] = []  # what the run showed after each kill
    kills_mid_write = 0
    try:
        for i in range(KILLS):
            w = Writer(script, path, shapes_path, order, tmp / f"writer{i}.log")
            w.wait_for(lambda line: line == "ready", timeout=120)
            for _ in range(rng.randint(0, 2)):  # let it commit a few steps first, sometimes
                if not w.wait_for(lambda line: line.startswith("wrote") or line == "done", timeout=60).startswith("wrote"):
                    break
            time.sleep(rng.uniform(0.0, 0.35))
            finished = "done" in w.seen or w.proc.poll() is not None
            w.kill()
            kills_mid_write += not finished
            record = {"kill": i, "open_error": None, "steps": [], "problems": []}
            if w.proc.returncode not in (0, -signal.SIGKILL):
                record["problems"].append(f"writer {i} failed on its own (exit {w.proc.returncode}):\n{w.errors()}")
            try:
                run = workbench.open(path)
                record["steps"] = run.steps
                if set(run.steps) != set(order[: len(run.steps)]):
                    record["problems"].append(f"visible steps {run.steps} are not a prefix of the write order")
                for step in run.steps:
                    record["problems"] += check_step(run, step, expected)
            except Exception as e:
                record["open_error"] = f"{type(e).__name__}: {e}"
            after_kill.append(record)

        final = Writer(script, path, shapes_path, order, tmp / "final.log")
        rc = final.finish(timeout=240)
        final_stderr = final.errors()
    finally:
        deadline = time.monotonic() + 30  # let the reader poll the finished run at least once
        while time.monotonic() < deadline and reader.is_alive() and set(STEPS) not in map(set, reader.observed):
            time.sleep(0.05)
        reader.stop.set()
        reader.join(timeout=60)

    return {"path": path, "order": order, "expected": expected, "after_kill": after_kill,
            "kills_mid_write": kills_mid_write, "final_rc": rc, "final_stderr": final_stderr, "reader": reader}


def test_run_opens_and_visible_steps_are_exact_after_every_kill(crash_scenario):
    s = crash_scenario
    assert s["kills_mid_write"] >= 3, "too few kills landed while the writer was still writing"
    for record in s["after_kill"]:
        assert record["open_error"] is None, f"run does not open after kill {record['kill']}: {record['open_error']}"
        assert record["problems"] == [], f"after kill {record['kill']}: {record['problems']}"


def test_restarted_writers_complete_the_run_bit_exact(crash_scenario):
    s = crash_scenario
    assert s["final_rc"] == 0, s["final_stderr"]
    run = workbench.open(s["path"])
    assert run.steps == sorted(STEPS)
    for step in run.steps:
        assert check_step(run, step, s["expected"]) == []
    traj = run.trajectory("model.layers.{layer}.mlp.gate_proj.weight")
    assert traj["step"].values.tolist() == sorted(STEPS)
    want = torch.stack([torch.stack([s["expected"](step)[0][f"model.layers.{l}.mlp.gate_proj.weight"]
                                     for l in range(traj.sizes["layer"])]) for step in sorted(STEPS)])
    assert torch.equal(torch.from_numpy(traj.values), want)


def test_concurrent_reader_never_sees_a_partial_step(crash_scenario):
    reader = crash_scenario["reader"]
    assert reader.problems == [], reader.problems[:10]
    distinct = {frozenset(o) for o in reader.observed}
    assert len(distinct) >= 5, f"the reader saw too few states of the run to mean anything: {len(distinct)}"
    assert frozenset(STEPS) in distinct, "the reader never saw the finished run"

