"""HuggingFace checkpoint folders in and out of a run (config.json + safetensors, sharded too)."""

from __future__ import annotations

import json
import os
import re
import struct
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from zarr.core.sync import sync

from workbench.errors import CorruptData, IncompatibleCheckpoint, RunNotFound, UnsafeFormat, UsageError
from workbench.store.layout import Layout, to_numpy
from workbench.store.tensors import LazyTensor, Tensor, reporting
from workbench.store.textfile import read_json_object

if TYPE_CHECKING:
    import torch  # imported where tensors are read or written

    from workbench.store.writer import RolesOf, Validator

# Per-step folder names of public suites: Pythia `step1000`, HF Trainer `checkpoint-1000`, Megatron `iter_0001000`.
STEP_FOLDER = re.compile(r"^(?:step|global_step|checkpoint-|iter_)0*(\d+)$")
DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default ("5GB")
# config.json keys that describe how a file was saved, not the model.
VOLATILE_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}


@cache
def safetensors_dtypes() -> dict[str, torch.dtype]:
    """safetensors dtype code -> torch dtype."""
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}


@dataclass(frozen=True)
class HFCheckpoint:
    step: int
    folder: Path

    @property
    def config(self) -> dict:
        return read_json_object(self.folder / "config.json", "an HF config.json holds one")


def find_checkpoints(sources: list[str | os.PathLike], step: int | None = None) -> list[HFCheckpoint]:
    """The checkpoints in `sources`: checkpoint folders, or folders of per-step checkpoint folders."""
    found: list[HFCheckpoint] = []
    for src in map(Path, sources):
        if not src.is_dir():
            raise UsageError(f"{src} is not a folder; give an HF checkpoint folder or a folder of step folders")
        if (src / "config.json").exists():
            found.append(HFCheckpoint(_step_of(src, step), src))
            continue
        subs = sorted((int(m[1]), d) for d in src.iterdir() if d.is_dir() and (m := STEP_FOLDER.match(d.name)))
        if not subs:
            raise UsageError(f"{src} has no config.json and no step folders (step1000, checkpoint-1000, iter_0001000)")
        if step is not None:
            raise UsageError("--step applies to a single checkpoint folder, not to a folder of step folders")
        found += [HFCheckpoint(s, d) for s, d in subs if (d / "config.json").exists()]
    steps = [c.step for c in found]
    if dupes := sorted({s for s in steps if steps.count(s) > 1}):
        raise UsageError(f"step {dupes[0]} is given more than once")
    return sorted(found, key=lambda c: c.step)


def _step_of(folder: Path, step: int | None) -> int:
    if step is not None:
        return step
    m = STEP_FOLDER.match(folder.name)
    if m is None:
        raise UsageError(f"cannot tell the step of {folder} from its name; pass --step N")
    return int(m[1])


def weight_files(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """The weight files of one checkpoint folder, safetensors preferred; pickle only when allowed."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index).exists():
            paths = [folder / f for f in _indexed_files(folder / index)]
        elif (folder / single).exists():
            paths = [folder / single]
        else:
            continue
        if single.endswith(".bin") and not allow_pickle:
            raise UnsafeFormat(f"{folder} holds only pickle weights ({paths[0].name}); pass --allow-pickle to load "
                               "them with torch.load(weights_only=True), or convert them to safetensors")
        return paths
    raise UsageError(f"{folder} has no model.safetensors, sharded index or pytorch_model.bin")


def _indexed_files(index: Path) -> list[str]:
    """The weight files a sharded checkpoint's index names in its `weight_map` (tensor name -> file)."""
    weight_map = read_json_object(index, "the index of a sharded checkpoint holds one").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise UsageError(f"{index}: no 'weight_map' object of tensor names and file names")
    return sorted(set(weight_map.values()))


def tensor_shapes(files: list[Path], step: int) -> dict[str, tuple[int, ...]]:
    """Shapes from the safetensors headers, read up front so that a truncated file fails the import before
    anything is written (pickle files report nothing here)."""
    from safetensors import SafetensorError, safe_open

    shapes = {}
    for f in files:
        if f.suffix != ".safetensors":
            continue
        try:
            with safe_open(f, framework="pt") as h:
                shapes.update((k, tuple(h.get_slice(k).get_shape())) for k in h.keys())
        except (SafetensorError, OSError) as e:
            raise CorruptData(str(f), step, f"truncated or unreadable safetensors file ({e})") from None
    return shapes


@contextmanager
def lazy_state_dict(files: list[Path]) -> Iterator[dict[str, Tensor]]:
    """The checkpoint's tensors by name, read only as the writer takes them: `LazyTensor`s over the safetensors
    files, pickle files memory-mapped (`weights_only`)."""
    with ExitStack() as stack:
        state: dict[str, Tensor] = {}
        for f in files:
            if f.suffix == ".safetensors":
                state.update(read_safetensors(stack.enter_context(open(f, "rb"))))
            else:
                state.update(_load_pickle(f))
        yield state


def read_safetensors(f: BinaryIO) -> dict[str, LazyTensor]:
    """Every tensor of an open safetensors file as a `LazyTensor` that reads its own bytes when loaded (a plain
    read of its byte range: safetensors' `safe_open` maps the file, and every page a load touches would stay
    resident, and counted, until the file is closed)."""
    (length,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    out = {}
    for name, entry in header.items():
        dtype, (begin, end) = safetensors_dtypes()[entry["dtype"]], entry["data_offsets"]
        out[name] = LazyTensor(tuple(entry["shape"]), dtype, partial(_read_range, f, 8 + length + begin, end - begin,
                                                                       tuple(entry["shape"]), dtype))
    return out


def _read_range(f: BinaryIO, offset: int, nbytes: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    import torch

    data = bytearray(nbytes)
    n = os.preadv(f.fileno(), [data], offset)
    if n != nbytes:
        raise CorruptData(f.name, None, f"truncated safetensors file: {n} of {nbytes} bytes at offset {offset}")
    return torch.frombuffer(data, dtype=dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)


def _load_pickle(f: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        return torch.load(f, map_location="cpu", weights_only=True, mmap=True)  # pages read as they are written
    except RuntimeError:  # a legacy (non-zip) pickle cannot be mapped
        return torch.load(f, map_location="cpu", weights_only=True)


def config_difference(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two HF configs, ignoring how the files were saved."""
    keys = (a.keys() | b.keys()) - VOLATILE_KEYS
    return sorted(k for k in keys if a.get(k) != b.get(k))


def import_hf(sources: list[str | os.PathLike], out: str | os.PathLike, step: int | None = None,
              allow_pickle: bool = False, tokenizer: str | os.PathLike | None = None, overwrite: bool = False,
              progress: bool = True, validate: "Validator | None" = None, layout: Layout = Layout(),
              roles_of: "RolesOf | None" = None) -> list[int]:
    """Import HF checkpoint folders into the run at `out` (created, or appended to); returns the steps written.
    A new run stores its tensors in `layout` and records the parameter roles `roles_of` gives for the config;
    an existing one keeps its own.

    Every file is checked before the first commit (with `validate`, its tensor shapes against the config too);
    each step is then one atomic commit.
    """
    from tqdm.auto import tqdm

    from workbench.store.run import Run
    from workbench.store.storage import local_path
    from workbench.store.writer import RunWriter, create

    if step is not None and step < 0:
        raise UsageError(f"--step must be a non-negative integer, got {step}")
    folder = local_path(out)
    if folder is not None and folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {out} is a file; give a run folder (new or existing) or s3://bucket/prefix")
    checkpoints = find_checkpoints(sources, step)
    config = checkpoints[0].config
    plan = []
    for c in checkpoints:
        if diff := config_difference(config, c.config):
            raise IncompatibleCheckpoint(f"{c.folder}/config.json differs from {checkpoints[0].folder} in {diff}")
        files = weight_files(c.folder, allow_pickle)
        shapes = tensor_shapes(files, c.step)  # empty for pickle files: those are checked when written
        if validate is not None:
            validate(shapes, config, bool(shapes))
        plan.append((c, files))
    try:
        run = Run(out)
    except RunNotFound:
        writer = create(out, model_config=config, tokenizer=_find_tokenizer(tokenizer, checkpoints),
                        train_config={"imported_from": [str(Path(s).absolute()) for s in sources]}, validate=validate,
                        layout=layout, roles=roles_of(config) if roles_of else None)
    else:
        if diff := config_difference(run.model_config, config):
            raise IncompatibleCheckpoint(f"{out} holds a model with another config (differs in {diff})")
        writer = RunWriter(out, validate=validate)
        if tokenizer is not None:
            writer.set_tokenizer(_find_tokenizer(tokenizer, checkpoints))
    total = sum(f.stat().st_size for _, files in plan for f in files)  # the tensors' bytes, near enough
    with tqdm(total=total, desc="import", unit="B", unit_scale=True, unit_divisor=1024, disable=not progress) as bar:
        for c, files in plan:
            bar.set_postfix_str(f"step {c.step}")
            with lazy_state_dict(files) as state:
                writer.write_checkpoint(c.step, reporting(state, bar.update), overwrite=overwrite)
    return [c.step for c, _ in plan]


def _find_tokenizer(tokenizer, checkpoints: list[HFCheckpoint]) -> Path | None:
    if tokenizer is not None:
        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.exists():
            raise UsageError(f"no tokenizer.json at {tokenizer}")
        return path
    for folder in (checkpoints[0].folder, checkpoints[0].folder.parent):
        if (folder / "tokenizer.json").exists():
            return folder / "tokenizer.json"
    return None


def export_hf(run, step: int, out: str | os.PathLike, tokenizer_config: dict | None = None,
              max_shard_size: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write one checkpoint as an HF folder that `AutoModelForCausalLM.from_pretrained` loads unchanged:
    `model.safetensors`, or shards of at most `max_shard_size` bytes with `model.safetensors.index.json` as
    transformers' `save_pretrained` names them (a tensor larger than that is a shard of its own).

    Tensor by tensor: each is read from the run and appended to its shard, so memory holds one tensor, never the
    checkpoint. Written to a temporary folder beside `out` and renamed into place, so a failed export leaves
    nothing. `tokenizer_config` is the tokenizer_config.json written beside the run's tokenizer (the layers above
    know the model family's special tokens: `workbench.models.views.tokenizer_config`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a new folder for the exported checkpoint")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty; give a new folder")
    if step < 0:
        raise UsageError(f"--step must be a non-negative integer, got {step}")
    if not (isinstance(max_shard_size, int) and max_shard_size > 0):
        raise UsageError(f"--max-shard-size must be a positive number of bytes, got {max_shard_size!r}")
    config = run.model_config
    if "model_type" not in config:
        raise UsageError("the run's model config has no model_type, so transformers cannot load an export")
    tensors = run.checkpoint(step).lazy_state_dict()
    shards = _shards(tensors, max_shard_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        names = ["model.safetensors"] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards):
            write_safetensors(tmp / name, {k: tensors[k] for k in shard}, {"format": "pt", "step": str(step)})
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                     "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        if run.tokenizer is not None:
            run.tokenizer.save(str(tmp / "tokenizer.json"))
            config_json = tokenizer_config or {"tokenizer_class": "PreTrainedTokenizerFast"}
            (tmp / "tokenizer_config.json").write_text(json.dumps(config_json, indent=2))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def format_size(n: float) -> str:
    """Bytes as people read them: `379.2 MB`."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


def parse_size(text: str, option: str = "--max-shard-size") -> int:
    """Bytes of a size as transformers writes `max_shard_size`: "5GB" (powers of 1000), "2GiB" (of 1024), or a
    number of bytes; a `UsageError` naming `option` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"{option} must be a size such as 5GB, 500MB or 2GiB, got {text!r}")
    power = "KMGT".find(match[2].upper()) + 1 if match[2] else 0
    return int(float(match[1]) * (1024 if match[3] else 1000) ** power)


def _shards(tensors: dict[str, LazyTensor], limit: int) -> list[list[str]]:
    """The names in order, grouped into shards of at most `limit` bytes (one larger tensor alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        n = tensors[name].nbytes
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def write_safetensors(path: Path, tensors: dict[str, LazyTensor], metadata: dict[str, str]) -> None:
    """A safetensors file written one tensor at a time: the header (names, dtypes, shapes, byte offsets, known
    before any tensor is read), then each tensor's bytes as it is loaded. safetensors' own `save_file` takes every
    tensor of the file in memory at once; the format (an 8-byte header length, the JSON header padded to 8 bytes,
    the raw little-endian data) is its specification, and the tests read the files back with safetensors."""
    codes = {dtype: code for code, dtype in safetensors_dtypes().items()}
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, lazy in tensors.items():
            t = sync(lazy.get())
            if tuple(t.shape) != tuple(lazy.shape) or t.dtype != lazy.dtype:
                raise ValueError(f"{name} read as {tuple(t.shape)} {t.dtype}, its header says {lazy.shape} {lazy.dtype}")
            f.write(to_numpy(t).reshape(-1).view(np.uint8).data)
            del t  # before the next tensor is read
