"""Megatron-LM checkpoints (torch_dist and legacy per-rank; MCore names and the earlier `language_model` ones) as
HF LlamaForCausalLM tensors, with no `megatron` import, no GPU and no process group.

Every tensor is a `LazyTensor`: loading one reads that tensor's bytes alone (of one layer: DCP byte ranges of a
torch_dist checkpoint, the memory-mapped tensors of the per-rank files), merged across tensor- and pipeline-parallel
shards, so an import holds a few tensors, never the model. Megatron's files are pickles; they are read without
running code from them: torch files through `torch.load(weights_only=True)` with an explicit allow-list (Megatron's
own enums in `args` become inert `MegatronValue`s), DCP's `.metadata` through `_SafeUnpickler`. Vocabulary padding
is trimmed to `args.vocab_size` when the args give it, as Megatron-LM's own HF converter does, so the HF model's
logits cover the real tokens only.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import os
import pickle
import re
import threading
from functools import partial
from pathlib import Path

import torch

from workbench.errors import IncompatibleCheckpoint, UnsafeFormat, UsageError, first_line
from workbench.store.tensors import LazyTensor

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
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # StorageMeta.checkpoint_id
})
_DTYPES = frozenset(n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype))
_TORCH_SAFE = [argparse.Namespace, collections.OrderedDict, type(Path())]
# torch's list of safe globals is one per process: loads that extend it (from the writer's threads) take turns.
_SAFE_GLOBALS = threading.Lock()
_ITER = re.compile(r"iter_(\d{7})$")
_RANK = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?$")
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)$")
_COLUMN = ("linear_qkv.weight", "linear_fc1.weight", "word_embeddings.weight", "output_layer.weight")
_ROW = ("linear_proj.weight", "linear_fc2.weight")
# Megatron-LM's GPT model before MCore (`--use-legacy-models`): a layer's names -> MCore's.
_EARLIER = {"self_attention.query_key_value.weight": "self_attention.linear_qkv.weight",
            "self_attention.dense.weight": "self_attention.linear_proj.weight",
            "mlp.dense_h_to_4h.weight": "mlp.linear_fc1.weight", "mlp.dense_4h_to_h.weight": "mlp.linear_fc2.weight",
            "input_norm.weight": "input_layernorm.weight", "post_attention_norm.weight": "pre_mlp_layernorm.weight",
            "post_attention_layernorm.weight": "pre_mlp_layernorm.weight"}
_EARLIER_TOP = {"language_model.embedding.word_embeddings.weight": "embedding.word_embeddings.weight",
                "language_model.encoder.final_norm.weight": "decoder.final_layernorm.weight",
                "language_model.encoder.final_layernorm.weight": "decoder.final_layernorm.weight",
                "language_model.output_layer.weight": "output_layer.weight",
                "word_embeddings_for_head.weight": "output_layer.weight"}  # tied head of the last PP stage


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only the classes DCP metadata is made of; anything else is refused before it runs."""

    def __init__(self, file, name: str):
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, qualname: str):
        if (module, qualname) in _METADATA_CLASSES or (module == "torch" and qualname in _DTYPES):
            return super().find_class(module, qualname)
        raise UnsafeFormat(f"{self.name} pickles {module}.{qualname}, which is not on the allow-list; not loaded")


class MegatronValue:
    """A value of one of Megatron's own classes in a pickle (an enum in `args`, such as `AttnBackend.auto`), kept
    as its class name and constructor arguments: the class is neither imported nor run."""

    def __init__(self, *args):
        self.args = args

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__qualname__}{self.args}"


def load_metadata(path: Path):
    """DCP's `.metadata` (a plain pickle), read with the allow-list unpickler."""
    with open(path, "rb") as f:
        return _SafeUnpickler(f, str(path)).load()


def load_torch(source, name: str, mmap: bool = False):
    """A torch.save file (path) or bytes (file object), with `weights_only` and an explicit allow-list (no code
    runs); `megatron.*` classes load as `MegatronValue`s. With `mmap`, tensors are mapped, read when used."""
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in _TORCH_SAFE}
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except (RuntimeError, ValueError, pickle.UnpicklingError):
        unsafe = []  # not a zip archive: the load below refuses what it must
    if isinstance(source, io.IOBase):
        source.seek(0)
    stand_ins = []
    for path in unsafe:
        module, _, qualname = path.rpartition(".")
        if module.split(".")[0] == "megatron":
            stand_ins.append(type(qualname, (MegatronValue,), {"__module__": module, "__qualname__": qualname}))
        elif path not in allowed:
            raise UnsafeFormat(f"{name} pickles {path}, which is not on the allow-list; not loaded")
    try:
        with _SAFE_GLOBALS, torch.serialization.safe_globals([*_TORCH_SAFE, *stand_ins]):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeFormat(f"{name}: refused by the safe loader ({first_line(e)[:200]})") from None


def _read_range(path: Path, offset: int, nbytes: int) -> bytes:
    """`nbytes` of the file at `offset` (a DCP item), and nothing else of it."""
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), nbytes, offset)
    if len(data) != nbytes:
        raise IncompatibleCheckpoint(f"{path} is truncated: {len(data)} of {nbytes} bytes at offset {offset}")
    return data


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
    """A `torch_dist` iteration folder: each tensor (or one layer of a stacked `[L, …]` tensor) read from the
    byte ranges of the chunks that hold it."""

    format = "megatron torch_dist"

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = load_metadata(folder / ".metadata")
        if missing := sorted({i.relative_path for i in self.meta.storage_data.values()
                              if not (folder / i.relative_path).exists()}):
            raise IncompatibleCheckpoint(f"{folder}: {', '.join(missing)} missing (named in .metadata)")
        self.tensors = {k: v for k, v in self.meta.state_dict_metadata.items()
                        if hasattr(v, "chunks") and "_extra_state" not in k and not k.startswith("optimizer")}
        self.where = {(i.fqn, tuple(i.offset)): info for i, info in self.meta.storage_data.items()
                      if i.offset is not None}
        for name, md in self.tensors.items():
            for chunk in md.chunks:
                if (name, tuple(chunk.offsets)) not in self.where:
                    raise IncompatibleCheckpoint(f"{folder}: chunk {tuple(chunk.offsets)} of {name} is missing "
                                                 f"from .metadata's storage index")
        self.args = self._common().get("args")

    def _common(self) -> dict:
        """`common.pt`, or (megatron-core 0.19 on) the ShardedObject `common_state` inside the DCP files."""
        common = self.folder / "common.pt"
        if common.exists():
            return load_torch(str(common), str(common))
        for index, info in self.meta.storage_data.items():
            if index.fqn.startswith("common_state/"):
                path = self.folder / info.relative_path
                return load_torch(io.BytesIO(_read_range(path, info.offset, info.length)), str(path))[0]
        return {}

    def lazy(self) -> dict[str, LazyTensor]:
        """Every model tensor by MCore name, per layer (`decoder.layers.N.…`: stacked tensors are cut)."""
        out = {}
        for name, md in self.tensors.items():
            shape, dtype = tuple(md.size), md.properties.dtype
            if name.startswith("decoder.layers.") and not _LAYER.match(name):
                rest = name.removeprefix("decoder.layers.")
                out.update((f"decoder.layers.{i}.{rest}", LazyTensor(shape[1:], dtype, partial(self.read, name, i)))
                           for i in range(shape[0]))
            else:
                out[name] = LazyTensor(shape, dtype, partial(self.read, name))
        return out

    def read(self, name: str, layer: int | None = None) -> torch.Tensor:
        """Tensor `name` (with `layer`, that index of its first axis) from the chunks that overlap it."""
        md = self.tensors[name]
        size = tuple(md.size)
        lo, hi = (0, size[0]) if layer is None else (layer, layer + 1)
        parts = [c for c in md.chunks if c.offsets[0] < hi and c.offsets[0] + c.sizes[0] > lo]
        if len(parts) == 1 and tuple(parts[0].sizes) == (hi - lo, *size[1:]):  # one chunk is the tensor: no copy
            t = self._chunk(name, parts[0])
            return t if layer is None else t[0]
        out = torch.empty((hi - lo, *size[1:]), dtype=md.properties.dtype)
        for chunk in parts:
            first = chunk.offsets[0]
            a, b = max(first, lo), min(first + chunk.sizes[0], hi)
            rest = tuple(slice(o, o + z) for o, z in zip(chunk.offsets[1:], chunk.sizes[1:]))
            out[(slice(a - lo, b - lo), *rest)] = self._chunk(name, chunk)[a - first:b - first]
        return out if layer is None else out[0]

    def _chunk(self, name: str, chunk) -> torch.Tensor:
        info = self.where[(name, tuple(chunk.offsets))]
        path = self.folder / info.relative_path
        return load_torch(io.BytesIO(_read_range(path, info.offset, info.length)), str(path)).reshape(tuple(chunk.sizes))


class Legacy:
    """A legacy per-rank iteration folder (`mp_rank_TT[_PPP]/model_optim_rng.pt`): each tensor merged across the
    TP ranks of its stage when loaded, layers numbered across the PP stages."""

    format = "megatron legacy (torch)"

    def __init__(self, folder: Path):
        self.folder = folder
        ranks = {}
        for p in folder.iterdir():
            if m := _RANK.match(p.name):
                ranks[(int(m.group(1)), int(m.group(2) or 0))] = p / "model_optim_rng.pt"
        first = ranks[min(ranks)]
        head = load_torch(str(first), str(first), mmap=True)
        self.args = head.get("args")
        if head.get("checkpoint_version", 3.0) < 2.0:
            raise IncompatibleCheckpoint(f"{first}: checkpoint version {head['checkpoint_version']} lays out the "
                                         f"fused QKV otherwise; only versions 2.0 and later are read")
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

    def model(self, tp_rank: int, stage: int) -> dict[str, torch.Tensor]:
        """One rank's model tensors by MCore name, memory-mapped (their bytes are read when used)."""
        f = self.ranks[(tp_rank, stage)]
        d = load_torch(str(f), str(f), mmap=True)
        if any(re.fullmatch(r"model\d+", k) for k in d):
            raise IncompatibleCheckpoint(f"{f} holds virtual pipeline stages (model0, model1, …); not supported")
        if "model" not in d:
            raise IncompatibleCheckpoint(f"{f} holds no model weights (optimizer only?)")
        return {_mcore_name(k): v for k, v in _flatten(d["model"]).items() if v is not None and "_extra_state" not in k}

    def lazy(self) -> dict[str, LazyTensor]:
        """Every model tensor by MCore name; a stage's layers follow the layers of the stages before it."""
        out, offset = {}, 0
        for s in range(self.pp):
            shards = [self.model(t, s) for t in range(self.tp)]
            for k, t in shards[0].items():
                m = _LAYER.match(k)
                name = f"decoder.layers.{int(m.group(1)) + offset}.{m.group(2)}" if m else k
                if name not in out:  # a tied output_layer on the last stage repeats the embedding
                    shape = tuple(_merge(k, [sh[k].to("meta") for sh in shards]).shape)
                    out[name] = LazyTensor(shape, t.dtype, partial(self._read, s, k))
            offset += len({m.group(1) for k in shards[0] if (m := _LAYER.match(k))})
        layers = getattr(self.args, "num_layers", None)
        if layers is not None and offset != layers:
            raise IncompatibleCheckpoint(f"{self.folder}: the PP stages hold {offset} layers, the args say {layers}")
        return out

    def _read(self, stage: int, key: str) -> torch.Tensor:
        return _merge(key, [self.model(t, stage)[key] for t in range(self.tp)])


def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested state dicts (the earlier models' `language_model.encoder.…`) as dotted names."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _mcore_name(name: str) -> str:
    """An earlier Megatron-LM GPT model's name as MCore names it (MCore names unchanged)."""
    if name in _EARLIER_TOP:
        return _EARLIER_TOP[name]
    if m := re.match(r"language_model\.encoder\.layers\.(\d+)\.(.+)$", name):
        return f"decoder.layers.{m.group(1)}.{_EARLIER.get(m.group(2), m.group(2))}"
    return name


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


def to_hf(state: dict[str, LazyTensor], config: dict) -> dict[str, LazyTensor]:
    """Megatron MCore names (local or TransformerEngine spec) -> HF LlamaForCausalLM names, lazily: each HF tensor
    reads its Megatron tensor when loaded. q/k/v of one fused `linear_qkv` and gate/up of one `linear_fc1` share one
    read of it (the writer takes a layer's tensors one after another; at most two fused tensors are kept)."""
    vocab, groups, d = config["vocab_size"], config["num_key_value_heads"], config["head_dim"]
    per_group = config["num_attention_heads"] // groups
    if biases := [k for k in state if k.endswith(".bias")]:
        raise IncompatibleCheckpoint(f"the checkpoint has biases LLaMA lacks (e.g. {biases[0]})")
    if "embedding.word_embeddings.weight" not in state:
        raise IncompatibleCheckpoint("the checkpoint holds no model weights (no embedding.word_embeddings.weight)")
    cached, lock = functools.lru_cache(maxsize=2)(lambda name: state[name].load()), threading.Lock()

    def fused(name: str) -> torch.Tensor:
        with lock:  # the writer loads from several threads: q, k and v wait for one read
            return cached(name)

    def cut(name: str, fn, shared: bool = False) -> LazyTensor:
        src = state[name]
        shape = tuple(fn(torch.empty(src.shape, dtype=src.dtype, device="meta")).shape)
        return LazyTensor(shape, src.dtype, lambda: fn(fused(name) if shared else src.load()).contiguous())

    def qkv(which: int):
        return lambda t: t.reshape(groups, (per_group + 2) * d, -1).split([per_group * d, d, d], dim=1)[which] \
            .reshape(-1, t.shape[-1])

    def same(t):
        return t

    hf = {"model.embed_tokens.weight": cut("embedding.word_embeddings.weight", lambda t: t[:vocab]),
          "model.norm.weight": cut("decoder.final_layernorm.weight", same)}
    if not config["tie_word_embeddings"]:
        if "output_layer.weight" not in state:
            raise IncompatibleCheckpoint("untied embeddings but no output_layer.weight in the checkpoint")
        hf["lm_head.weight"] = cut("output_layer.weight", lambda t: t[:vocab])
    rename = {"self_attention.linear_proj.weight": "self_attn.o_proj.weight",
              "mlp.linear_fc2.weight": "mlp.down_proj.weight",
              "input_layernorm.weight": "input_layernorm.weight",
              "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
              "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
              "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight"}
    for k in state:
        if k in ("embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight"):
            continue
        m = _LAYER.match(k)
        if m is None or (m.group(2) not in rename and m.group(2) not in (
                "self_attention.linear_qkv.weight", "mlp.linear_fc1.weight")):
            raise IncompatibleCheckpoint(f"unknown Megatron tensor {k}; not a LLaMA-style GPT model")
        p, rest = f"model.layers.{m.group(1)}.", m.group(2)
        if rest == "self_attention.linear_qkv.weight":
            for i, proj in enumerate("qkv"):
                hf[f"{p}self_attn.{proj}_proj.weight"] = cut(k, qkv(i), shared=True)
        elif rest == "mlp.linear_fc1.weight":
            for i, proj in enumerate(("gate", "up")):
                hf[f"{p}mlp.{proj}_proj.weight"] = cut(k, lambda t, i=i: t.chunk(2, dim=0)[i], shared=True)
        else:
            hf[p + rename[rest]] = cut(k, same)
    return hf


def import_megatron(root: str | os.PathLike, out: str | os.PathLike, select: str | None = None,
                    latest: bool = False, tokenizer: str | os.PathLike | None = None, progress: bool = True,
                    layout=None) -> list[int]:
    """Import every `iter_XXXXXXX` folder of `root` (or those in `select`, "A:B"; or the latest) as steps
    of the run at `out`, one commit each; steps already in the run are skipped. Every iteration is opened, its
    args, names and shapes checked before the first write; then each is written tensor by tensor (one progress
    bar over bytes). The optimizer state is not imported (train_config says so)."""
    from tqdm.auto import tqdm

    from workbench.errors import RunNotFound
    from workbench.models.config_check import check_against_config
    from workbench.models.roles import parameter_roles
    from workbench.store.layout import Layout
    from workbench.store.run import Run
    from workbench.store.tensors import reporting
    from workbench.store.writer import RunWriter, create

    root = Path(root)
    if tokenizer is not None:
        tokenizer = Path(tokenizer) / "tokenizer.json" if Path(tokenizer).is_dir() else Path(tokenizer)
        if not tokenizer.exists():
            raise UsageError(f"no tokenizer.json at {tokenizer}")
    readers = [(n, open_iteration(p)) for n, p in iterations(root, select, latest)]
    config = hf_config(readers[0][1].args)
    states = []
    for n, r in readers:
        if hf_config(r.args) != config:
            raise IncompatibleCheckpoint(f"{r.folder}: its args give another model than {readers[0][1].folder}")
        states.append((n, to_hf(r.lazy(), config)))
        check_against_config({k: t.shape for k, t in states[-1][1].items()}, config, True)
    try:
        done = set(Run(out).steps)
        writer = RunWriter(out, validate=check_against_config)
    except RunNotFound:
        done = set()
        writer = create(out, model_config=config, tokenizer=tokenizer,
                        train_config={"imported_from": str(root.absolute()), "format": readers[0][1].format,
                                      "optimizer": "not imported"},
                        validate=check_against_config, layout=layout or Layout(), roles=parameter_roles(config))
    todo = [(n, state) for n, state in states if n not in done]
    total = sum(t.nbytes for _, state in todo for t in state.values())
    with tqdm(total=total, desc="import megatron", unit="B", unit_scale=True, unit_divisor=1024,
              disable=not progress) as bar:
        for n, state in todo:
            bar.set_postfix_str(f"iteration {n}")
            writer.write_checkpoint(n, reporting(state, bar.update))
    return [n for n, _ in todo]
