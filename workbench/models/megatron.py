"""Megatron-LM checkpoints (torch_dist and legacy per-rank) as HF LlamaForCausalLM state dicts, with no
`megatron` import, no GPU and no process group.

Megatron's files are pickles; they are read without running code from them: torch zip files through
`torch.load(weights_only=True)` with an explicit allow-list, DCP's `.metadata` through `_SafeUnpickler`.
Vocabulary padding is trimmed to `args.vocab_size` when the args give it, as Megatron-LM's own HF converter
does, so the HF model's logits cover the real tokens only.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import re
from pathlib import Path

import torch

from workbench.errors import IncompatibleCheckpoint, UnsafeFormat, UsageError, first_line

# Classes DCP's `.metadata` pickle may name (module, qualname).
_METADATA_CLASSES = frozenset({
    *(("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(("torch.distributed.checkpoint.planner", n) for n in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData")),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch", "Size"), ("torch", "strided"), ("torch", "contiguous_format"), ("torch", "preserve_format"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
})
_DTYPES = frozenset(n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype))
_TORCH_SAFE = [argparse.Namespace, collections.OrderedDict, type(Path())]
_ITER = re.compile(r"iter_(\d{7})$")
_RANK = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?$")
_COLUMN = ("linear_qkv.weight", "linear_fc1.weight", "word_embeddings.weight", "output_layer.weight")
_ROW = ("linear_proj.weight", "linear_fc2.weight")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only the classes DCP metadata is made of; anything else is refused before it runs."""

    def __init__(self, file, name: str):
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, qualname: str):
        if (module, qualname) in _METADATA_CLASSES or (module == "torch" and qualname in _DTYPES):
            return super().find_class(module, qualname)
        raise UnsafeFormat(f"{self.name} pickles {module}.{qualname}, which is not on the allow-list; not loaded")


def load_metadata(path: Path):
    """DCP's `.metadata` (a plain pickle), read with the allow-list unpickler."""
    with open(path, "rb") as f:
        return _SafeUnpickler(f, str(path)).load()


def load_torch(source, name: str):
    """A torch.save file or bytes, with `weights_only` and an explicit allow-list (no code runs)."""
    try:
        with torch.serialization.safe_globals(_TORCH_SAFE):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeFormat(f"{name}: refused by the safe loader ({first_line(e)[:200]})") from None


def iterations(root: Path, select: str | None = None, latest: bool = False) -> list[tuple[int, Path]]:
    """The `iter_XXXXXXX` folders under `root` (within `select`, "A:B"; or the latest one), in order."""
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _ITER.match(p.name)) and p.is_dir()) \
        if root.is_dir() else []
    if not found:
        raise UsageError(f"{root} is not a Megatron checkpoint folder (no iter_XXXXXXX folders)")
    if latest:
        f = root / "latest_checkpointed_iteration.txt"
        n = int(f.read_text().strip()) if f.exists() else found[-1][0]
        found = [x for x in found if x[0] == n]
    if select:
        try:
            a, b = (int(x) if x else None for x in select.split(":"))
        except ValueError:
            raise UsageError(f"--iterations must be A:B (integers), got {select!r}") from None
        found = [x for x in found if (a is None or x[0] >= a) and (b is None or x[0] <= b)]
    if not found:
        raise UsageError(f"no iterations of {root} match the selection")
    return found


class TorchDist:
    """A `torch_dist` iteration folder: tensors read chunk by chunk by byte range, no process group."""

    format = "megatron torch_dist"

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = load_metadata(folder / ".metadata")
        common = folder / "common.pt"
        self.args = load_torch(str(common), str(common)).get("args") if common.exists() else None
        self.tensors = {k: v for k, v in self.meta.state_dict_metadata.items() if hasattr(v, "chunks")}
        if missing := sorted({i.relative_path for i in self.meta.storage_data.values()
                              if not (folder / i.relative_path).exists()}):
            raise IncompatibleCheckpoint(f"{folder}: {', '.join(missing)} missing (named in .metadata)")

    def names(self) -> list[str]:
        return [k for k in self.tensors if "_extra_state" not in k and not k.startswith("optimizer")]

    def read(self, name: str) -> torch.Tensor:
        md = self.tensors[name]
        out = torch.empty(tuple(md.size), dtype=md.properties.dtype)
        index = {(k.fqn, tuple(k.offset)): v for k, v in self.meta.storage_data.items() if k.fqn == name}
        for chunk in md.chunks:
            info = index.get((name, tuple(chunk.offsets)))
            path = self.folder / info.relative_path if info is not None else None
            if path is None or not path.exists():
                raise IncompatibleCheckpoint(f"{self.folder}: chunk {tuple(chunk.offsets)} of {name} is missing"
                                             f"{'' if path is None else ' (' + path.name + ')'}")
            with open(path, "rb") as f:
                f.seek(info.offset)
                part = load_torch(io.BytesIO(f.read(info.length)), str(path))
            out[tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))] = part.reshape(tuple(chunk.sizes))
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """Per-layer names `decoder.layers.N.…`; stacked `[L, …]` tensors are unstacked."""
        out = {}
        for name in self.names():
            t = self.read(name)
            if name.startswith("decoder.layers.") and not re.match(r"decoder\.layers\.\d+\.", name):
                for i in range(t.shape[0]):
                    out[f"decoder.layers.{i}.{name[len('decoder.layers.'):]}"] = t[i]
            else:
                out[name] = t
        return out


class Legacy:
    """A legacy per-rank iteration folder (`mp_rank_TT[_PPP]/model_optim_rng.pt`): TP and PP merged."""

    format = "megatron legacy (torch)"

    def __init__(self, folder: Path):
        self.folder = folder
        ranks = {}
        for p in folder.iterdir():
            if m := _RANK.match(p.name):
                ranks[(int(m.group(1)), int(m.group(2) or 0))] = p / "model_optim_rng.pt"
        first = ranks[min(ranks)]
        self.args = load_torch(str(first), str(first)).get("args")
        tp = getattr(self.args, "tensor_model_parallel_size", None) or 1 + max(t for t, _ in ranks)
        pp = getattr(self.args, "pipeline_model_parallel_size", None) or 1 + max(s for _, s in ranks)
        named_pp = any(s for _, s in ranks) or any(_RANK.match(p.parent.name).group(2) for p in ranks.values())
        for key in ((t, s) for t in range(tp) for s in range(pp)):
            if key not in ranks or not ranks[key].exists():
                raise IncompatibleCheckpoint(f"{folder}: shard mp_rank_{key[0]:02d}"
                                             f"{'_%03d' % key[1] if pp > 1 or named_pp else ''}/model_optim_rng.pt "
                                             f"is missing (the args say TP={tp}, PP={pp})")
        if extra := sorted(set(ranks) - {(t, s) for t in range(tp) for s in range(pp)}):
            raise IncompatibleCheckpoint(f"{folder}: shards {extra} do not fit the args' TP={tp}, PP={pp}")
        self.ranks, self.tp, self.pp = ranks, tp, pp

    def state(self) -> dict[str, torch.Tensor]:
        layers = getattr(self.args, "num_layers", None)
        if layers is not None and layers % self.pp:
            raise IncompatibleCheckpoint(f"{self.folder}: {layers} layers do not split into PP={self.pp} stages")
        out = {}
        for s in range(self.pp):
            shards = []
            for t in range(self.tp):
                f = self.ranks[(t, s)]
                d = load_torch(str(f), str(f))
                if "model" not in d:
                    raise IncompatibleCheckpoint(f"{f} holds no model weights (optimizer only?)")
                shards.append({k: v for k, v in d["model"].items() if "_extra_state" not in k and v is not None})
            per_stage = layers // self.pp if layers else 0
            for k in shards[0]:
                t = _merge(k, [sh[k] for sh in shards])
                if m := re.match(r"decoder\.layers\.(\d+)\.(.*)", k):
                    k = f"decoder.layers.{int(m.group(1)) + s * per_stage}.{m.group(2)}"
                if k not in out:  # tied output_layer on the last stage repeats the embedding
                    out[k] = t
        return out


def _merge(name: str, parts: list[torch.Tensor]) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    if name.endswith("linear_fc1.weight"):
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])])
    if name.endswith(_COLUMN):
        return torch.cat(parts, dim=0)
    if name.endswith(_ROW):
        return torch.cat(parts, dim=1)
    return parts[0]


def open_iteration(folder: Path):
    """The reader for one iteration folder, by its layout."""
    if (folder / ".metadata").exists():
        return TorchDist(folder)
    if any(_RANK.match(p.name) for p in folder.iterdir()):
        return Legacy(folder)
    raise UsageError(f"{folder} is neither a torch_dist (.metadata) nor a legacy (mp_rank_*) Megatron checkpoint")


def hf_config(args) -> dict:
    """The HF LlamaConfig dict from Megatron's stored `args`; unknown architectures refused in one line."""
    if args is None:
        raise IncompatibleCheckpoint("the checkpoint stores no Megatron args; cannot tell the architecture")
    a = vars(args)
    if a.get("normalization", "RMSNorm") != "RMSNorm":
        raise IncompatibleCheckpoint(f"normalization {a.get('normalization')} is not RMSNorm (LLaMA)")
    if a.get("position_embedding_type", "rope") != "rope" or a.get("rotary_interleaved", False) \
            or a.get("rotary_percent", 1.0) != 1.0:
        raise IncompatibleCheckpoint("position embeddings are not full, non-interleaved RoPE (LLaMA)")
    if not a.get("swiglu", True):
        raise IncompatibleCheckpoint("the MLP is not SwiGLU (args.swiglu is false); not a LLaMA architecture")
    heads, hidden = a["num_attention_heads"], a["hidden_size"]
    groups = a.get("num_query_groups") if a.get("group_query_attention") else None
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": a["ffn_hidden_size"], "num_hidden_layers": a["num_layers"],
        "num_attention_heads": heads, "num_key_value_heads": groups or heads,
        "head_dim": a.get("kv_channels") or hidden // heads,
        "max_position_embeddings": a.get("max_position_embeddings") or a.get("seq_length"),
        "rms_norm_eps": a.get("norm_epsilon", 1e-5), "rope_theta": float(a.get("rotary_base", 10000)),
        "vocab_size": a.get("vocab_size") or a["padded_vocab_size"],
        "tie_word_embeddings": not a.get("untie_embeddings_and_output_weights", False),
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "torch_dtype": str(a.get("params_dtype", torch.float32)).removeprefix("torch."),
    }


def to_hf(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Megatron MCore names (local or TransformerEngine spec) -> HF LlamaForCausalLM names."""
    vocab, heads, groups = config["vocab_size"], config["num_attention_heads"], config["num_key_value_heads"]
    d = config["head_dim"]
    if biases := [k for k in state if k.endswith(".bias")]:
        raise IncompatibleCheckpoint(f"the checkpoint has biases LLaMA lacks (e.g. {biases[0]})")
    if "embedding.word_embeddings.weight" not in state:
        raise IncompatibleCheckpoint("the checkpoint holds no model weights (no embedding.word_embeddings.weight)")
    hf = {"model.embed_tokens.weight": state.pop("embedding.word_embeddings.weight")[:vocab],
          "model.norm.weight": state.pop("decoder.final_layernorm.weight")}
    out = state.pop("output_layer.weight", None)
    if not config["tie_word_embeddings"]:
        if out is None:
            raise IncompatibleCheckpoint("untied embeddings but no output_layer.weight in the checkpoint")
        hf["lm_head.weight"] = out[:vocab]
    rename = {"self_attention.linear_proj.weight": "self_attn.o_proj.weight",
              "mlp.linear_fc2.weight": "mlp.down_proj.weight",
              "input_layernorm.weight": "input_layernorm.weight",
              "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
              "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
              "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight"}
    for k, t in state.items():
        m = re.match(r"decoder\.layers\.(\d+)\.(.*)", k)
        if m is None:
            raise IncompatibleCheckpoint(f"unknown Megatron tensor {k}; not a LLaMA-style GPT model")
        p, rest = f"model.layers.{m.group(1)}.", m.group(2)
        if rest == "self_attention.linear_qkv.weight":
            g = t.reshape(groups, (heads // groups + 2) * d, -1)
            q, kk, v = g.split([heads // groups * d, d, d], dim=1)
            hf[p + "self_attn.q_proj.weight"] = q.reshape(heads * d, -1)
            hf[p + "self_attn.k_proj.weight"] = kk.reshape(groups * d, -1)
            hf[p + "self_attn.v_proj.weight"] = v.reshape(groups * d, -1)
        elif rest == "mlp.linear_fc1.weight":
            hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"] = t.chunk(2, dim=0)
        elif rest in rename:
            hf[p + rename[rest]] = t
        else:
            raise IncompatibleCheckpoint(f"unknown Megatron tensor {k}; not a LLaMA-style GPT model")
    return {k: v.contiguous() for k, v in hf.items()}


def import_megatron(root: str | os.PathLike, out: str | os.PathLike, select: str | None = None,
                    latest: bool = False, tokenizer: str | os.PathLike | None = None, progress: bool = True,
                    layout=None) -> list[int]:
    """Import every `iter_XXXXXXX` folder of `root` (or those in `select`, "A:B"; or the latest) as steps
    of the run at `out`, one commit each; steps already in the run are skipped. Every iteration is opened and
    its args checked before the first write. The optimizer state is not imported (train_config says so)."""
    from tqdm.auto import tqdm

    from workbench.errors import RunNotFound
    from workbench.models.config_check import check_against_config
    from workbench.store.run import Run
    from workbench.store.layout import Layout
    from workbench.store.writer import RunWriter, create

    root = Path(root)
    if tokenizer is not None:
        tokenizer = Path(tokenizer) / "tokenizer.json" if Path(tokenizer).is_dir() else Path(tokenizer)
        if not tokenizer.exists():
            raise UsageError(f"no tokenizer.json at {tokenizer}")
    readers = [(n, open_iteration(p)) for n, p in iterations(root, select, latest)]
    config = hf_config(readers[0][1].args)
    for _, r in readers:
        if hf_config(r.args) != config:
            raise IncompatibleCheckpoint(f"{r.folder}: its args give another model than {readers[0][1].folder}")
    try:
        run = Run(out)
        done = set(run.steps)
        writer = RunWriter(out, validate=check_against_config)
    except RunNotFound:
        done = set()
        writer = create(out, model_config=config, tokenizer=tokenizer,
                        train_config={"imported_from": str(root.absolute()), "format": readers[0][1].format,
                                      "optimizer": "not imported"},
                        validate=check_against_config, layout=layout or Layout())
    written = []
    for n, r in tqdm(readers, desc="import megatron", unit="ckpt", disable=not progress):
        if n in done:
            continue
        writer.write_checkpoint(n, to_hf(r.state(), config))
        written.append(n)
    return written
