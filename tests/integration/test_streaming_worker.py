"""A `dask worker` whose memory limit is a quarter of the float32 model streams it block by block on its own
(issue 19): the analysis completes, stores what the whole model gives, and the worker process's peak resident
memory (VmHWM) stays below the model's size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from distributed import Client

import workbench
from tests.conftest import dask_cluster
from workbench.analysis import analyze

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
          "intermediate_size": 2816, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
          "vocab_size": 32000, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
          "torch_dtype": "float32"}  # 1.47 GB of float32 weights
WORDS = "the model learns a token from data at every step while the loss falls on held out text".split()


def _run(path: Path) -> tuple[Path, int]:
    """A one-checkpoint run of a random LLaMA of CONFIG with a small tokenizer; the evaluation text file."""
    from training.data.tokenizer import train_tokenizer
    from training.model import Llama, ModelConfig, checkpoint_state

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 120)) for _ in range(8)]
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_hf(CONFIG))
    nbytes = sum(p.numel() * 4 for p in model.parameters())
    workbench.create(path / "run", CONFIG, tokenizer=train_tokenizer(texts, vocab_size=512)).write_checkpoint(
        0, checkpoint_state(model))
    (path / "eval.txt").write_text("\n\n".join(texts))
    return path / "eval.txt", nbytes


def test_a_worker_with_a_quarter_of_the_model_streams_it(tmp_path):
    def peak_rss() -> int:  # run in the worker (defined here, so that it travels by value)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    eval_file, nbytes = _run(tmp_path)
    params = {"loss": {"seq_len": 64, "batch_size": 4, "max_tokens": 256}}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           # the limit is what the worker reports to the analyses; Dask's own reactions to it are off
           "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "False", "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "False",
           "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False", "DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE": "False"}
    with dask_cluster(env, [["--memory-limit", str(nbytes // 4)]]) as address:
        analyze(tmp_path / "run", ["loss"], scheduler=address, progress=False, eval_data=eval_file, params=params)
        with Client(address, timeout=5) as client:
            (peak,) = client.run(peak_rss).values()
    print(f"worker peak {peak / 1e9:.2f} GB, model {nbytes / 1e9:.2f} GB, limit {nbytes // 4 / 1e9:.2f} GB")
    assert peak < nbytes, (peak, nbytes)
    streamed = workbench.open(tmp_path / "run").results("loss").load()
    analyze(tmp_path / "run", ["loss"], workers=0, progress=False, eval_data=eval_file, params=params, stream=False,
            recompute=True)
    whole = workbench.open(tmp_path / "run").results("loss").load()
    np.testing.assert_allclose(streamed["loss"].values, whole["loss"].values, rtol=1e-5)
