"""The training configuration: optimiser, schedule, data and checkpointing."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from training.config import check_bool, check_int, check_number, require

DEVICES = ("auto", "cpu", "cuda")
COMPRESSIONS = ("none", "lz4")  # how the run stores tensors (workbench.store.layout.Layout)
PARALLEL = ("none", "ddp", "fsdp")  # how torchrun's processes share a step (training.distributed)


def check_train_value(name: str, value: object, label: str) -> None:
    """Raise a one-line UsageError naming `label` unless `value` is valid for the TrainConfig field `name`."""
    match name:
        case "max_steps" | "every" | "batch_size" | "seq_len" | "n_documents":
            check_int(label, value)
        case "warmup_steps" | "seed" | "data_seed" | "micro_batch_size":
            check_int(label, value, minimum=0)
        case "lr" | "adam_eps" | "grad_clip":
            check_number(label, value)
        case "weight_decay":
            check_number(label, value, zero_ok=True)
        case "min_lr_ratio":
            check_number(label, value, zero_ok=True, high=1, high_ok=True)
        case "beta1" | "beta2" | "heldout_fraction":
            check_number(label, value, zero_ok=True, high=1)
        case "early":
            check_bool(label, value)
        case "device":
            require(value in DEVICES, label, "one of " + ", ".join(DEVICES), value)
        case "compression":
            require(value in COMPRESSIONS, label, "one of " + ", ".join(COMPRESSIONS), value)
        case "parallel":
            require(value in PARALLEL, label, "one of " + ", ".join(PARALLEL), value)
        case "preset" | "corpus" | "text_field":
            require(isinstance(value, str) and value != "", label, "a non-empty string", value)


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
    compression: str = "none"  # of the stored tensors: none (fastest writes) | lz4 (~12% smaller)
    parallel: str = "none"  # under torchrun: ddp (each rank the whole model) | fsdp (FSDP2: parameters sharded)
    micro_batch_size: int = 0  # rows per rank and micro-step; 0: batch_size / processes (no accumulation)

    def __post_init__(self) -> None:
        for f in fields(self):
            check_train_value(f.name, getattr(self, f.name), f"[train] {f.name}")

    def checkpoint_steps(self) -> list[int]:
        """Steps that get a checkpoint: 0, the log-spaced early steps, every `every`, and the last."""
        steps = set(range(0, self.max_steps + 1, self.every)) | {self.max_steps}
        if self.early:
            steps |= {2**i for i in range(10) if 2**i <= self.max_steps}
        return sorted(steps)


def with_overrides(cfg: TrainConfig, **overrides) -> TrainConfig:
    """`cfg` with the command-line `overrides` that are not None; a bad one is named as its option (`--max-steps`)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    for name, value in given.items():
        check_train_value(name, value, "--" + name.replace("_", "-"))
    return replace(cfg, **given)
