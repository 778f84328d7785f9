"""HuggingFace checkpoint folders in and out of a run (config.json + safetensors, sharded too)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.errors import CorruptData, IncompatibleCheckpoint, RunNotFound, UnsafeFormat, UsageError

from workbench.store.layout import Layout
from workbench.store.textfile import read_json_object

if TYPE_CHECKING:
    from workbench.store.writer import Validator

# Per-step folder names of public suites: Pythia `step1000`, HF Trainer `checkpoint-1000`, Megatron `iter_0001000`.
STEP_FOLDER = re.compile(r"^(?:step|global_step|checkpoint-|iter_)0*(\d+)$")
# config.json keys that describe how a file was saved, not the model.
VOLATILE_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}


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


def load_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            state.update(load_file(f))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def config_difference(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two HF configs, ignoring how the files were saved."""
    keys = (a.keys() | b.keys()) - VOLATILE_KEYS
    return sorted(k for k in keys if a.get(k) != b.get(k))


def import_hf(sources: list[str | os.PathLike], out: str | os.PathLike, step: int | None = None,
              allow_pickle: bool = False, tokenizer: str | os.PathLike | None = None, overwrite: bool = False,
              progress: bool = True, validate: "Validator | None" = None, layout: Layout = Layout()) -> list[int]:
    """Import HF checkpoint folders into the run at `out` (created, or appended to); returns the steps written.
    A new run stores its tensors in `layout`; an existing one keeps its own.

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
                        layout=layout)
    else:
        if diff := config_difference(run.model_config, config):
            raise IncompatibleCheckpoint(f"{out} holds a model with another config (differs in {diff})")
        writer = RunWriter(out, validate=validate)
        if tokenizer is not None:
            writer.set_tokenizer(_find_tokenizer(tokenizer, checkpoints))
    for c, files in tqdm(plan, desc="import", unit="ckpt", disable=not progress):
        writer.write_checkpoint(c.step, load_state_dict(files), overwrite=overwrite)
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


def export_hf(run, step: int, out: str | os.PathLike, tokenizer_config: dict | None = None) -> Path:
    """Write one checkpoint as an HF folder that `AutoModelForCausalLM.from_pretrained` loads unchanged.

    Written to a temporary folder beside `out` and renamed into place, so a failed export leaves nothing.
    `tokenizer_config` is the tokenizer_config.json written beside the run's tokenizer (the layers above know
    the model family's special tokens: `workbench.models.views.tokenizer_config`).
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a new folder for the exported checkpoint")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty; give a new folder")
    if step < 0:
        raise UsageError(f"--step must be a non-negative integer, got {step}")
    config = run.model_config
    if "model_type" not in config:
        raise UsageError("the run's model config has no model_type, so transformers cannot load an export")
    state = run.checkpoint(step).state_dict()  # views into whole-layer reads, which safetensors saves as they are
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt", "step": str(step)})
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

