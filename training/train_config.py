"""The training configuration: optimiser, schedule, data and checkpointing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    preset: str = "tiny"
    max_steps: int = 2000
    every: int = 1000  # checkpoint interval in steps
    early: bool = True  # also keep steps 0, 1, 2, 4, ..., 512 (as Pythia does)
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0  # model initialisation
    data_seed: int = 0  # corpus generation, held-out split and shuffling
    corpus: str = "synthetic"  # "synthetic" or a local path (folder of .txt, .jsonl, .parquet)
    text_field: str = "text"
    n_documents: int = 3000  # synthetic corpus size
    heldout_fraction: float = 0.05
    device: str = "auto"  # auto | cpu | cuda

    def checkpoint_steps(self) -> list[int]:
        """Steps that get a checkpoint: 0, the log-spaced early steps, every `every`, and the last."""
        steps = set(range(0, self.max_steps + 1, self.every)) | {self.max_steps}
        if self.early:
            steps |= {2**i for i in range(10) if 2**i <= self.max_steps}
        return sorted(steps)
