"""The trainer: AdamW with warmup + cosine, gradient clipping, bf16 autocast on CUDA, and a run that records
every checkpoint (with optimizer state), the exact data order and every step's metrics.

Resuming continues from the last committed checkpoint and, on CPU, reproduces the uninterrupted run bit for
bit: the data order is a function of (data_seed, step) and the checkpoint holds the full optimizer state.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from training.config import ModelConfig
from training.dataset import Dataset, build_dataset
from training.distributed import World, accumulation, gradient_sync, join, leave
from training.model import Llama, checkpoint_state, load_checkpoint_state, parameter_roles
from training.sharded import ShardedWriter, from_full, local, shard
from training.train_config import TrainConfig, with_overrides
from training.writer_thread import BackgroundWriter, host_copy
from workbench.errors import MissingData, UsageError, WorkbenchError


class TrainingDiverged(WorkbenchError):
    """A non-finite loss; the run keeps its last good checkpoint."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `max_steps`."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / max(1, cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def make_optimizer(model: Llama, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms), as in LLaMA."""
    params = dict(model.named_parameters())
    decay = [p for n, p in params.items() if p.ndim >= 2]
    no_decay = [p for n, p in params.items() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                             fused=next(model.parameters()).is_cuda)


def optimizer_state(model: Llama, opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW state keyed by HF parameter names."""
    return {name: dict(opt.state[p]) for name, p in model.named_parameters() if p in opt.state}


def load_optimizer_state(model: Llama, opt: torch.optim.Optimizer, state: dict[str, dict[str, torch.Tensor]],
                         world: World = World()) -> None:
    """AdamW state by HF parameter names into `opt`, each moment cut as its parameter is (FSDP: this rank's rows)."""
    for name, p in model.named_parameters():
        if name in state:
            opt.state[p] = {k: (from_full(v, p, world) if k != "step" else v.clone()) for k, v in state[name].items()}


class Trainer:
    """Trains `model_cfg` under `cfg` into the run at `out`, or resumes that run (`resume=True`)."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, out: str | Path, resume: bool = False,
                 progress: bool = True):
        self.model_cfg, self.cfg, self.out, self.progress, self.resume = model_cfg, cfg, str(out), progress, resume
        self.device = resolve_device(cfg.device)
        if not resume:
            from workbench.store.storage import check_new_location

            check_new_location(self.out)  # before minutes of corpus and tokenizer building
        if cfg.seq_len > model_cfg.max_position_embeddings:
            raise UsageError(f"seq_len {cfg.seq_len} exceeds max_position_embeddings {model_cfg.max_position_embeddings}")

    @classmethod
    def resuming(cls, out: str | Path, model_cfg: ModelConfig | None = None, progress: bool = True,
                 **overrides) -> "Trainer":
        """A trainer that continues the run at `out` with its stored configs (`overrides`: max_steps, device)."""
        from workbench.store import Run

        run = Run(out)
        if not run.train_config or "max_steps" not in run.train_config:
            raise MissingData(f"{out} has no training config (an imported run?); nothing to resume")
        known = {f.name for f in fields(TrainConfig)}  # the run also states processes and accumulation steps
        saved = {k: v for k, v in run.train_config.items() if k in known}
        if run.train_config.get("processes", 1) != int(os.environ.get("WORLD_SIZE", "1")):
            saved["micro_batch_size"] = 0  # at another world size the micro-batch follows it (unless given)
        cfg = with_overrides(TrainConfig(**saved), **overrides)
        stored = ModelConfig.from_hf(run.model_config)
        if model_cfg is not None:
            ours = replace(model_cfg, eos_token_id=stored.eos_token_id, bos_token_id=stored.bos_token_id)
            if diff := [f"{k} ({v} in the run, {asdict(ours)[k]} here)" for k, v in asdict(stored).items()
                        if asdict(ours)[k] != v]:
                raise UsageError(f"cannot resume {out}: its model config differs in " + ", ".join(diff))
        return cls(stored, cfg, out, resume=True, progress=progress)

    def train(self) -> str:
        """Train to `max_steps`; returns the run's location."""
        from workbench import store

        world = join(self.cfg.parallel, self.device)
        micro, steps = accumulation(self.cfg.batch_size, self.cfg.micro_batch_size, world)
        torch.manual_seed(self.cfg.seed)  # every rank starts from the same weights
        model = Llama(self.model_cfg).to(self.device)
        fsdp = self.cfg.parallel == "fsdp" and world.size > 1
        if self.resume:
            run = store.Run(self.out)
            if not run.steps:
                raise UsageError(f"{self.out} has no checkpoint to resume from; delete it and train again")
            start = run.steps[-1]
            ckpt = run.checkpoint(start)
            load_checkpoint_state(model, {k: v.to(self.device) for k, v in ckpt.state_dict().items()})
            model = shard(model) if fsdp else model
            opt = make_optimizer(model, self.cfg)
            load_optimizer_state(model, opt, ckpt.optimizer_state() or {}, world)
            data = build_dataset(self.cfg, self.model_cfg.vocab_size, tokenizer=run.tokenizer)
            tokens_seen = int(run.metrics()["tokens"].iloc[-1]) if start > 0 else 0
            writer = store.RunWriter(self.out) if world.main else None
        else:
            data = build_dataset(self.cfg, self.model_cfg.vocab_size)
            self.model_cfg.eos_token_id = data.eos_id
            model_cfg = self.model_cfg
            roles = parameter_roles(model_cfg.num_attention_heads, model_cfg.num_key_value_heads, model_cfg.head_dim)
            writer = None
            if world.main:  # one writer; the other ranks hold the same weights and data
                writer = store.create(self.out, model_config=model_cfg.to_hf(), tokenizer=data.tokenizer,
                                      train_config={**asdict(self.cfg), "processes": world.size,
                                                    "micro_batch_size": micro, "accumulation_steps": steps},
                                      layout=store.Layout(compression=self.cfg.compression), roles=roles)
                # The corpus and step 0 in one commit: a run either has both or no checkpoint at all.
                writer.write_checkpoint(0, host_copy(checkpoint_state(model)), tables=data.tables())
            start, tokens_seen = 0, 0
            model = shard(model) if fsdp else model
            opt = make_optimizer(model, self.cfg)
        if fsdp:  # every rank writes its part of each checkpoint
            state = checkpoint_state(model)
            writer = ShardedWriter(writer, world, {n: t.shape for n, t in state.items()},
                                   {n: t.dtype for n, t in state.items()})
        self._loop(model, opt, data, writer, start, tokens_seen, world, micro, steps)
        leave(world)
        return self.out

    def _loop(self, model: Llama, opt, data: Dataset, writer, start: int, tokens_seen: int, world: World,
              micro: int, accumulate: int) -> None:
        from tqdm.auto import tqdm

        cfg, device = self.cfg, self.device
        keep = set(cfg.checkpoint_steps())
        background = BackgroundWriter(writer) if writer is not None else None
        ddp = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 and cfg.parallel == "ddp" else model
        metrics: list[dict] = []
        order: list[dict] = []
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
        bar = tqdm(total=cfg.max_steps, initial=start, desc="train", unit="step", disable=not (self.progress and world.main))
        model.train()
        try:
            for step, tokens, spans in data.batches(cfg.batch_size, start_step=start + 1, max_step=cfg.max_steps):
                t0 = time.perf_counter()
                lr = lr_at(step, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                rows = world.rows(tokens).to(device, non_blocking=True)
                loss = torch.zeros((), device=device)
                for i in range(accumulate):  # gradients synchronised across ranks on the last micro-step only
                    part = rows[i * micro: (i + 1) * micro]
                    with gradient_sync(ddp, world, last=i == accumulate - 1):
                        with autocast:
                            part_loss = ddp(part[:, :-1], part[:, 1:])
                        (part_loss / accumulate).backward()  # / 1 is exact: one process stays bit-exact
                    loss += part_loss.detach() / accumulate
                grad_norm = local(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                opt.step()
                opt.zero_grad(set_to_none=True)
                loss_value = world.mean(loss).item()
                if not math.isfinite(loss_value):  # every rank sees the same (all-reduced) loss and stops
                    last = "the run's last step"
                    if background is not None:
                        background.close()
                        last = f"step {background.last_committed}"
                    raise TrainingDiverged(f"loss is {loss_value} at step {step}; training stopped, the last good "
                                           f"checkpoint is {last}")
                n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
                tokens_seen += n_tokens
                dt = time.perf_counter() - t0
                metrics.append({"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                                "tokens": tokens_seen, "tokens_per_s": n_tokens / dt, "step_time_s": dt})
                order += [{"step": step, **s} for s in spans]
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                if step in keep:
                    if background is not None:
                        tables = {"metrics": _columns(metrics), "data/order": _columns(order)}
                        background.submit(step, host_copy({k: local(v) for k, v in checkpoint_state(model).items()}),
                                          {k: host_copy({s: local(t) for s, t in v.items()})
                                           for k, v in optimizer_state(model, opt).items()}, tables)
                    metrics, order = [], []
        finally:
            bar.close()
        if background is not None:
            background.close()


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]} if rows else {}
