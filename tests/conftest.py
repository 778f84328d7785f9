"""Shared fixtures: a tiny LLaMA config and trajectories of checkpoints written by transformers itself.

The reference tensors of the store tests are the `model.safetensors` files that
`LlamaForCausalLM.save_pretrained` writes: the store must give back exactly those bits.
No weights are downloaded; every model is built from a config and seeded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def tiny_llama_config(**overrides):
    """A tiny `transformers.LlamaConfig` (3 layers, 4 heads, 2 kv heads)."""
    import transformers

    return transformers.LlamaConfig(**{**TINY, **overrides})


def seeded_model(config, step: int, dtype: torch.dtype = torch.float32):
    """A random-init `LlamaForCausalLM` whose every tensor depends on `step`.

    HF initialises RMSNorm weights to ones, identical at every step; they are perturbed here so that a
    store handing back the wrong step's norm would be caught too.
    """
    import transformers

    torch.manual_seed(1000 + step)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


def save_hf_trajectory(root: Path, config, steps, dtype: torch.dtype = torch.float32) -> dict[int, Path]:
    """`root/step{N}` HF checkpoint folders (safetensors), one seeded model per step."""
    folders = {}
    for step in steps:
        folder = Path(root) / f"step{step}"
        if not (folder / "model.safetensors").exists():
            seeded_model(config, step, dtype).save_pretrained(folder)
        folders[step] = folder
    return folders


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="session")
def tiny_config():
    return tiny_llama_config()


@pytest.fixture(scope="session")
def hf_trajectory(tmp_path_factory, tiny_config):
    """Factory: `hf_trajectory(steps, dtype)` -> {step: folder}, cached for the whole session."""
    root = tmp_path_factory.mktemp("hf")

    def make(steps=(0, 10, 20), dtype: torch.dtype = torch.float32) -> dict[int, Path]:
        return save_hf_trajectory(root / str(dtype).removeprefix("torch."), tiny_config, steps, dtype)

    return make


@pytest.fixture(scope="session")
def hf_state_dicts(hf_trajectory):
    """Factory: `hf_state_dicts(steps, dtype)` -> {step: state dict loaded from its safetensors file}."""

    def make(steps=(0, 10, 20), dtype: torch.dtype = torch.float32) -> dict[int, dict[str, torch.Tensor]]:
        return {step: load_safetensors(folder) for step, folder in hf_trajectory(steps, dtype).items()}

    return make


@pytest.fixture
def counted(monkeypatch):
    """The requests and bytes the Icechunk store returns for chunk keys of `params/` from now on."""
    import icechunk

    seen = {"requests": 0, "bytes": 0}
    get = icechunk.IcechunkStore.get

    async def counting(self, key, prototype, byte_range=None):
        buf = await get(self, key, prototype, byte_range)
        if key.startswith("params/") and "/c/" in key:
            seen["requests"] += 1
            seen["bytes"] += 0 if buf is None else len(buf)
        return buf

    monkeypatch.setattr(icechunk.IcechunkStore, "get", counting)
    return seen


@pytest.fixture
def new_run(tmp_path, tiny_config):
    """Factory: a fresh run (RunWriter) under tmp_path with the tiny model's config."""
    import workbench

    counter = iter(range(1000))

    def make(model_config: dict | None = None):
        path = tmp_path / f"run{next(counter)}"
        config = tiny_config.to_dict() if model_config is None else model_config
        return path, workbench.create(path, model_config=config)

    return make


@pytest.fixture
def seeded_run(new_run, hf_state_dicts):
    """Factory: `seeded_run(steps)` -> the path of a fresh run holding the seeded tiny model at those steps."""

    def make(steps) -> Path:
        path, writer = new_run()
        for step, sd in hf_state_dicts(steps).items():
            writer.write_checkpoint(step, sd)
        return path

    return make


SMALL_TOML = """
[model]
vocab_size = 384
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 64

[train]
n_documents = 300
seq_len = 32
batch_size = 4
warmup_steps = 5
max_steps = 30
every = 5
early = false
"""


def chunk_file(files, tensor: torch.Tensor) -> Path:
    """The one chunk file among `files` that holds `tensor` (of q/k/v or a row-blocked matrix): a shard of the
    uncompressed sharded layout starts with the tensor's first rows; a format-1 chunk is the blosc-compressed
    tensor followed by a 4-byte crc32c."""
    import numcodecs

    t = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    want = t.contiguous().numpy().tobytes()

    def holds(raw: bytes) -> bool:
        if raw.startswith(want[:256]):
            return True
        try:
            return bytes(numcodecs.Blosc().decode(raw[:-4])) == want
        except Exception:
            return False

    matches = [Path(f) for f in files if holds(Path(f).read_bytes())]
    assert len(matches) == 1, f"expected exactly one chunk file holding the tensor, found {len(matches)}"
    return matches[0]


def wb(*args) -> tuple[int, str]:
    """Runs the `wb` command line in this process: (exit code, output). An exception the command line does not
    turn into its one-line error (a traceback a user would see) is raised here."""
    from typer.testing import CliRunner

    from workbench.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture
def small_toml(tmp_path) -> Path:
    """A training preset file of a 2-layer LLaMA on 300 synthetic documents, 30 steps, a checkpoint every 5."""
    path = tmp_path / "small.toml"
    path.write_text(SMALL_TOML)
    return path


@pytest.fixture(scope="session")
def _trained(tmp_path_factory) -> Path:
    from training.presets import load
    from training.trainer import Trainer

    folder = tmp_path_factory.mktemp("trained")
    (folder / "small.toml").write_text(SMALL_TOML)
    Trainer(*load(folder / "small.toml"), folder / "run", progress=False).train()
    return folder / "run"


@pytest.fixture
def trained_run(_trained, tmp_path) -> Path:
    """A copy (the test's own) of a run trained once per session with `SMALL_TOML`: steps 0, 5, ..., 30, a
    tokenizer, the corpus with held-out documents and canaries, and the data order."""
    import shutil

    return Path(shutil.copytree(_trained, tmp_path / "trained"))


@pytest.fixture(scope="session")
def analysed_run(_trained, tmp_path_factory) -> Path:
    """A copy of the trained run with every built-in analysis stored at every step (read only: copy it to write)."""
    import shutil

    from workbench.analysis import analyze

    path = Path(shutil.copytree(_trained, tmp_path_factory.mktemp("analysed") / "run"))
    analyze(path, workers=0, progress=False, params={"similarity": {"tokens": 128}, "memorization": {"sample": 12},
                                                     "probes": {"max_tokens": 1500}})
    return path


# ---------------------------------------------------------------------------------------------- servers on loopback

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dask_cluster(env: dict, workers: list[list[str]]) -> Iterator[str]:
    """`dask scheduler` and one `dask worker` per entry of `workers` (its extra arguments) on loopback, started
    as users start them, with `env`; yields the scheduler's address once every worker has joined."""
    from distributed import Client

    bin_dir, port = Path(sys.executable).parent, free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], **quiet)]
    procs += [subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard", *extra],
                               **quiet) for extra in workers]
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(len(workers), timeout=60)
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_server():
    """`moto_server` on a loopback port; yields the environment that points boto3 and Icechunk at it."""
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError as e:
            if getattr(e, "code", None) is not None:  # an HTTP answer: the server is up
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from e
            time.sleep(0.2)
    yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    """A fresh bucket for the test; the AWS environment set in this process (and inherited by its children)."""
    import boto3

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    bucket = "t-" + request.node.name.lower().replace("_", "-")[:50]
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"
