"""`wb`: the workbench's batch command line. Thin: parse, call the library, print."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Trajectory Workbench: every checkpoint of a training run, in one store.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
import_app = typer.Typer(help="Bring checkpoints from other formats into a run.", no_args_is_help=True)
export_app = typer.Typer(help="Write a checkpoint of a run in another format.", no_args_is_help=True)
data_app = typer.Typer(help="The training data of a run: documents, order, search.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="The tokenizer of a run.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")
app.add_typer(data_app, name="data")
app.add_typer(tokenizer_app, name="tokenizer")

RunArg = Annotated[str, typer.Argument(help="run folder or s3://bucket/prefix")]
StreamOpt = Annotated[Optional[bool], typer.Option(
    "--stream/--no-stream", help="forward passes block by block from the store (default: when the model does not fit "
                                 "--max-memory or a Dask worker's memory limit)")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option(
    "--max-memory", help="memory a forward pass may hold (2GB, 500MB); a larger float32 model streams")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    help="compute dtype of forward passes: float32, bfloat16 or float16 (default: float32 on CPU, stored on CUDA)")]
Compression = Annotated[Optional[str], typer.Option(
    help="of a new run's tensors: none (fastest writes, the default) or lz4 (~12% smaller)")]


def _layout(compression: str | None, whole_tensors: bool = False):
    from workbench.store import Layout

    return Layout(sharded=not whole_tensors, compression=compression or "none")


def expected_errors(fn):
    """Print an expected error as one line on stderr and exit 1 (data) or 2 (usage); no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from workbench.errors import WorkbenchError

        try:
            return fn(*args, **kwargs)
        except WorkbenchError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def _memory(text: str | None) -> int | None:
    from workbench.store.hf import parse_size

    return parse_size(text, "--max-memory") if text is not None else None


def _steps_text(steps: list[int]) -> str:
    if len(steps) <= 12:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:6])) + ", …, " + ", ".join(map(str, steps[-4:]))


@app.command()
@expected_errors
def info(run: RunArg, as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """Steps, parameter count, bytes on disk and configs of a run."""
    import math

    import workbench
    from workbench.store.hf import format_size
    from workbench.store.storage import bytes_on_disk

    r = workbench.open(run)
    n_params = sum(math.prod(a.shape[1:]) for a in r.parameter_arrays.values())
    summary = {
        "run": r.location, "steps": r.steps, "parameters": n_params, "bytes_on_disk": bytes_on_disk(run),
        "code_version": r.code_version, "tokenizer_vocab": r.tokenizer.get_vocab_size() if r.tokenizer else None,
        "layout": r.layout.to_attrs(), "model_config": r.model_config, "train_config": r.train_config,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"run          {r.location}")
    typer.echo(f"checkpoints  {len(r.steps)}: {_steps_text(r.steps) or 'none'}")
    typer.echo(f"parameters   {n_params:,} in {len(r.parameter_arrays)} arrays")
    typer.echo(f"layout       {r.layout.describe()}")
    if summary["bytes_on_disk"] is not None:
        typer.echo(f"on disk      {format_size(summary['bytes_on_disk'])}")
    typer.echo(f"tokenizer    {'vocab ' + str(summary['tokenizer_vocab']) if r.tokenizer else 'none'}")
    typer.echo(f"written by   {r.code_version}")
    typer.echo("model config " + json.dumps(r.model_config, sort_keys=True))
    if r.train_config:
        typer.echo("train config " + json.dumps(r.train_config, sort_keys=True))


@app.command()
@expected_errors
def verify(run: RunArg):
    """Read every chunk: checksums, NaN/Inf, and checkpoints that jump against both neighbours. Exit 1 on any problem."""
    import workbench
    from workbench.store.verify import verify as verify_run

    problems = verify_run(workbench.open(run), progress=sys.stderr.isatty())
    for p in problems:
        typer.echo(str(p))
    if problems:
        typer.echo(f"{len(problems)} problem(s) found", err=True)
        raise typer.Exit(1)
    typer.echo("ok: every chunk reads back with a valid checksum, all values finite, no jumps")


@import_app.command("hf")
@expected_errors
def import_hf(
    src: Annotated[list[Path], typer.Argument(help="checkpoint folders, or folders of step folders")],
    out: Annotated[str, typer.Option("--out", help="run to create or append to")],
    step: Annotated[Optional[int], typer.Option(help="step of a single checkpoint folder")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="load pytorch_model.bin (weights_only)")] = False,
    tokenizer: Annotated[Optional[Path], typer.Option(help="folder or tokenizer.json to store with the run")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace steps already in the run")] = False,
    compression: Compression = None,
):
    """Import HuggingFace checkpoint folders (Pythia step1000, HF checkpoint-1000, Megatron iter_0001000)."""
    from workbench.models.config_check import check_against_config
    from workbench.models.roles import parameter_roles
    from workbench.store.hf import import_hf as run_import

    steps = run_import(src, out, step=step, allow_pickle=allow_pickle, tokenizer=tokenizer, overwrite=overwrite,
                       progress=sys.stderr.isatty(), validate=check_against_config, layout=_layout(compression),
                       roles_of=parameter_roles)
    typer.echo(f"imported {len(steps)} checkpoint(s) into {out}: {_steps_text(steps)}")


@import_app.command("megatron")
@expected_errors
def import_megatron(
    root: Annotated[Path, typer.Argument(help="Megatron checkpoint folder holding iter_XXXXXXX folders")],
    out: Annotated[str, typer.Option("--out", help="run to create or append to")],
    iterations: Annotated[Optional[str], typer.Option(help="iterations A:B to import (inclusive)")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="only latest_checkpointed_iteration.txt's")] = False,
    tokenizer: Annotated[Optional[Path], typer.Option(help="folder or tokenizer.json to store with the run")] = None,
    compression: Compression = None,
):
    """Import a Megatron-LM checkpoint (torch_dist or legacy per-rank; TP/PP merged) as LLaMA steps; no GPU."""
    from workbench.models.megatron import import_megatron as run_import

    steps = run_import(root, out, iterations, latest=latest, tokenizer=tokenizer, progress=sys.stderr.isatty(),
                       layout=_layout(compression))
    typer.echo(f"imported {len(steps)} checkpoint(s) into {out}: {_steps_text(steps)} (optimizer state not imported)")


@export_app.command("hf")
@expected_errors
def export_hf(
    run: RunArg,
    step: Annotated[int, typer.Option(help="checkpoint step to export")],
    out: Annotated[Path, typer.Option("--out", help="new folder for config.json + model.safetensors")],
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="largest safetensors file (5GB, 500MB, 2GiB)")] = "5GB",
):
    """Export one checkpoint as an HF folder that transformers' from_pretrained loads (tensor by tensor)."""
    import workbench
    from workbench.models.views import tokenizer_config
    from workbench.store.hf import export_hf as run_export
    from workbench.store.hf import parse_size

    limit = parse_size(max_shard_size)
    r = workbench.open(run)
    config = tokenizer_config(r) if r.tokenizer is not None else None
    typer.echo(f"wrote {run_export(r, step, out, config, limit)}")


@app.command()
@expected_errors
def repack(
    run: RunArg,
    out: Annotated[str, typer.Option("--out", help="new run folder (or s3://bucket/prefix) to write")],
    compression: Compression = None,
    whole_tensors: Annotated[bool, typer.Option(
        "--whole-tensors", help="one chunk per tensor (format 1) instead of sharded tensors")] = False,
):
    """Rewrite a run into the sharded layout (or another codec), bit-exact: every checkpoint, table and result."""
    from workbench.models.roles import parameter_roles
    from workbench.store.repack import repack as run_repack

    layout = _layout(compression, whole_tensors)
    new = run_repack(run, out, layout, progress=sys.stderr.isatty(), roles_of=parameter_roles)
    typer.echo(f"repacked {len(new.steps)} checkpoint(s) of {run} into {out} ({layout.describe()})")


@app.command()
@expected_errors
def train(
    out: Annotated[str, typer.Option("--out", help="run folder (or s3://bucket/prefix) to write")],
    preset: Annotated[Optional[str], typer.Option(help="tiny, small, 125m, 350m or 1b")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with [model] and [train] tables")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps")] = None,
    every: Annotated[Optional[int], typer.Option(help="checkpoint every N steps (default 1000)")] = None,
    no_early: Annotated[bool, typer.Option("--no-early", help="skip the log-spaced early checkpoints")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="'synthetic' or a folder/.jsonl/.parquet of local text")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the run's last checkpoint")] = False,
    compression: Compression = None,
    parallel: Annotated[Optional[str], typer.Option(help="none, or under torchrun ddp (whole model per process) or fsdp (sharded)")] = None,
    micro_batch_size: Annotated[Optional[int], typer.Option("--micro-batch-size", help="rows per process and micro-step (default: batch_size / processes)")] = None,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="processes on this machine: runs this command under torchrun (default --parallel ddp)")] = None,
    max_restarts: Annotated[int, typer.Option("--max-restarts", help="with --nproc: times torchrun restarts the processes after one fails; a restart continues from the run's last checkpoint")] = 0,
):
    """Train a LLaMA and record every checkpoint, the data order and the metrics in a run."""
    from training.presets import load
    from training.trainer import Trainer

    if nproc is not None:
        raise typer.Exit(_torchrun(nproc, max_restarts, parallel is None and not resume))
    if resume or _restarted(out):
        model_cfg = load(config, preset)[0] if (preset or config) else None
        trainer = Trainer.resuming(out, model_cfg, progress=sys.stderr.isatty(), max_steps=max_steps, device=device,
                                   parallel=parallel, micro_batch_size=micro_batch_size)
    else:
        model_cfg, train_cfg = load(config, preset, max_steps=max_steps, every=every, device=device, corpus=corpus,
                                    early=False if no_early else None, compression=compression, parallel=parallel,
                                    micro_batch_size=micro_batch_size)
        trainer = Trainer(model_cfg, train_cfg, out, progress=sys.stderr.isatty())
    trainer.train()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for all ranks
        typer.echo(f"trained {out} to step {trainer.cfg.max_steps}")


def _torchrun(nproc: int, max_restarts: int, ddp: bool) -> int:
    """This `wb train` command again, under torchrun with `nproc` processes on this machine (`--standalone`:
    rendezvous on a free local port), restarted up to `max_restarts` times; `ddp`: with `--parallel ddp`.
    Returns torchrun's exit code."""
    import subprocess

    from workbench.errors import UsageError

    if nproc < 1:
        raise UsageError(f"--nproc must be a positive integer, got {nproc}")
    if max_restarts < 0:
        raise UsageError(f"--max-restarts must be 0 or more, got {max_restarts}")
    argv, args = [], iter(sys.argv[1:])
    for a in args:
        if a in ("--nproc", "--max-restarts"):
            next(args, None)
        elif not a.startswith(("--nproc=", "--max-restarts=")):
            argv.append(a)
    argv += ["--parallel", "ddp"] if ddp else []
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # restarted ranks rejoin reliably
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                            str(nproc), "--max-restarts", str(max_restarts), sys.argv[0], *argv], env=env)


def _restarted(out: str) -> bool:
    """Whether torchrun restarted this command after a failure, and the run has a checkpoint to continue from."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return False
    import workbench
    from workbench.errors import WorkbenchError

    try:
        return bool(workbench.open(out).steps)
    except WorkbenchError:
        return False


@data_app.command("find")
@expected_errors
def data_find(run: RunArg, text: Annotated[str, typer.Argument(help="text to search for in the training documents")],
              limit: Annotated[int, typer.Option(help="most documents to list")] = 20):
    """Documents that contain TEXT, and the training steps at which each was seen."""
    import workbench
    from workbench.errors import UsageError

    if limit < 1:
        raise UsageError(f"--limit must be a positive integer, got {limit}")
    r = workbench.open(run)
    hits = r.find_documents(text)
    for doc in hits[:limit]:
        steps = r.steps_seen(doc["document_id"])
        seen = f"seen at {len(steps)} step(s): {_steps_text(steps)}" if steps else "never trained on (held out)"
        typer.echo(f"doc {doc['document_id']} [{doc['domain']}] {seen}\n    {doc['snippet']}")
    typer.echo(f"{len(hits)} document(s) contain {text!r}")


@tokenizer_app.command("stats")
@expected_errors
def tokenizer_stats(run: RunArg):
    """Characters per token per language/domain of the run's tokenizer on its corpus."""
    import workbench
    from training.data.tokenizer import chars_per_token
    from training.dataset import run_documents
    from workbench.errors import MissingData

    r = workbench.open(run)
    if r.tokenizer is None:
        raise MissingData(f"{run} has no tokenizer; attach one with `wb import hf ... --tokenizer DIR`")
    typer.echo(f"vocab size {r.tokenizer.get_vocab_size()}")
    for domain, cpt in chars_per_token(r.tokenizer, run_documents(r)).items():
        typer.echo(f"{domain:>8}  {cpt:.2f} characters/token")


class AnalyzeCommand(typer.core.TyperCommand):
    """`wb analyze`, whose help lists the registered analyses (built-in and plugins', imported to show it), one
    line each."""

    def format_help(self, ctx, formatter) -> None:
        import textwrap

        from rich.markup import escape

        from workbench.analysis import registry

        self.epilog = "Analyses (--only):\n" + "\n".join(
            f"{name:<13} {escape(textwrap.shorten(cls.description, 64, placeholder=' …'))}"
            for name, cls in registry().items())
        super().format_help(ctx, formatter)


@app.command("analyze", cls=AnalyzeCommand)
@expected_errors
def analyze_cmd(
    run: RunArg,
    only: Annotated[Optional[str], typer.Option("--only", help="analyses to run, comma-separated (default: all; listed below)")] = None,
    steps: Annotated[Optional[str], typer.Option(help="start:stop:stride over step values (0:20000:1000) or a list (0,1000)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="local worker processes (default: cores and memory allow; 0: no Dask)")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="address of an existing dask.distributed scheduler")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="evaluation set of forward analyses: .txt, .jsonl or .parquet of text")] = None,
    device: Annotated[str, typer.Option(help="forward passes on auto, cpu or cuda")] = "auto",
    recompute: Annotated[bool, typer.Option("--recompute", help="replace stored results instead of skipping them")] = False,
    commit_every: Annotated[int, typer.Option("--commit-every", help="commit after this many finished tasks (or 10 s)")] = 16,
    stream: StreamOpt = None,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = None,
):
    """Compute analyses at every (chosen) checkpoint with Dask; store them under results/ of the run. Resumable."""
    from workbench.analysis import analyze as run_analyses
    done = run_analyses(run, only, steps, workers=workers, scheduler=scheduler, progress=sys.stderr.isatty(),
                        eval_data=eval_data, device=device, recompute=recompute, commit_every=commit_every,
                        stream=stream, max_memory=_memory(max_memory), dtype=dtype)
    for name, computed in done.items():
        what = f": {_steps_text(computed)}" if computed else " (all were stored already)"
        typer.echo(f"{name}: computed {len(computed)} step(s){what}")


@app.command("probe")
@expected_errors
def probe_cmd(
    run: RunArg,
    tasks: Annotated[Optional[str], typer.Option(help="script, language, fact and .jsonl files, comma-separated (default: every built-in task the run supports)")] = None,
    steps: Annotated[Optional[str], typer.Option(help="start:stop:stride over step values or a list")] = None,
    workers: Annotated[Optional[int], typer.Option(help="local worker processes (0: no Dask)")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="address of an existing dask.distributed scheduler")] = None,
    fit: Annotated[str, typer.Option(help="ridge (streamed, the default) or logistic (the reference fit)")] = "ridge",
    recompute: Annotated[bool, typer.Option("--recompute", help="replace stored probe results")] = False,
    stream: StreamOpt = None,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = None,
):
    """Linear probes of every layer at every checkpoint (results/probes): script, language, facts, your JSONL tasks."""
    from workbench.analysis import analyze as run_analyses

    params = {"fit": fit, **({"tasks": [t.strip() for t in tasks.split(",") if t.strip()]} if tasks else {})}
    done = run_analyses(run, ["probes"], steps, workers=workers, scheduler=scheduler, progress=sys.stderr.isatty(),
                        params={"probes": params}, recompute=recompute, stream=stream,
                        max_memory=_memory(max_memory), dtype=dtype)
    computed = done["probes"]
    typer.echo(f"probes: computed {len(computed)} step(s)" + (f": {_steps_text(computed)}" if computed else
                                                               " (all were stored already)"))


@app.command("evaluate")
@expected_errors
def evaluate_cmd(
    run: RunArg,
    tasks: Annotated[Optional[str], typer.Option(help="facts-en, facts-ja, facts-en2ja, facts-ja2en and task files (.json from llm-jp-eval, .jsonl of questions), comma-separated (default: every built-in task the run supports)")] = None,
    steps: Annotated[Optional[str], typer.Option(help="start:stop:stride over step values or a list")] = None,
    workers: Annotated[Optional[int], typer.Option(help="local worker processes (0: no Dask)")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="address of an existing dask.distributed scheduler")] = None,
    shots: Annotated[int, typer.Option(help="few-shot examples of task files")] = 4,
    template: Annotated[Optional[str], typer.Option(help="context template of question files, with {question}")] = None,
    harness_tasks: Annotated[Optional[str], typer.Option("--harness-tasks", help="lm-evaluation-harness tasks, comma-separated")] = None,
    harness_include: Annotated[Optional[Path], typer.Option("--harness-include", help="folder of harness task YAMLs")] = None,
    recompute: Annotated[bool, typer.Option("--recompute", help="replace stored evaluation results")] = False,
    stream: StreamOpt = None,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = None,
):
    """Task scores at every checkpoint (results/evaluation): planted facts per language and across, task files."""
    from workbench.analysis import analyze as run_analyses

    def listed(text):
        return [t.strip() for t in text.split(",") if t.strip()] if text else []

    params = {"shots": shots, "template": template, "tasks": listed(tasks), "harness_tasks": listed(harness_tasks),
              "harness_include": str(harness_include) if harness_include else None}
    done = run_analyses(run, ["evaluation"], steps, workers=workers, scheduler=scheduler, progress=sys.stderr.isatty(),
                        params={"evaluation": params}, recompute=recompute, stream=stream,
                        max_memory=_memory(max_memory), dtype=dtype)
    computed = done["evaluation"]
    typer.echo(f"evaluation: computed {len(computed)} step(s)" + (f": {_steps_text(computed)}" if computed else
                                                                   " (all were stored already)"))


@app.command("results")
@expected_errors
def results_cmd(
    run: RunArg,
    name: Annotated[Optional[str], typer.Argument(help="analysis (default: list the stored ones)")] = None,
    step: Annotated[Optional[int], typer.Option(help="show every row of one step instead of per-step means")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="also write the table as an interactive plotly chart (.html)")] = None,
):
    """Stored analysis results: the list, a per-step summary of one, or one step in full."""
    import pandas as pd

    import workbench
    from workbench.analysis import Analysis, registry
    from workbench.analysis.provenance import stale_steps, summary, without
    from workbench.errors import StepNotFound

    r = workbench.open(run)
    if name is None:
        found = r.stored_results()
        if not found:
            typer.echo(f"no results stored in {run}; compute them with `wb analyze {run}`")
        stale = {n: stale_steps(r, n) for n in found}
        for n, info in found.items():
            params = json.dumps(info.analysis.get("params", {}), sort_keys=True)
            state = f"  stale: {summary(stale[n])}" if stale[n] else ""
            typer.echo(f"{n:<16} {len(info.steps):>6} step(s): {_steps_text(info.steps)}  params {params}{state}")
        if any(stale.values()):
            typer.echo(f"stale steps read a checkpoint or table that has changed since; `wb analyze {run}` recomputes them")
        return
    ds = without(r.results(name))
    have = [int(s) for s in ds["step"].values]
    if step is not None and step not in have:
        raise StepNotFound(step, have, f"{name} results")
    analysis = registry().get(name, Analysis)
    table = analysis.summary(ds, step)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250):
        typer.echo(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if plot is not None:
        from workbench.figures.results import results_figure

        fig = results_figure(name, ds, step, title=f"{name} of {run}" + (f" at step {step}" if step is not None else ""))
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(plot, include_plotlyjs=True)  # self-contained: opens offline
        typer.echo(f"plot written to {plot}")


@app.command()
@expected_errors
def dashboard(
    runs: Annotated[list[str], typer.Argument(help="run folders or s3:// URLs (the first is shown first)")],
    port: Annotated[int, typer.Option(help="port to serve on")] = 8501,
    host: Annotated[str, typer.Option(help="address to serve on (0.0.0.0: every interface)")] = "127.0.0.1",
):
    """Browse runs in the browser: curves, layer × step maps, two checkpoints side by side, the training data."""
    import signal
    import subprocess
    from importlib.resources import files

    import workbench
    from workbench.errors import UsageError

    for run in runs:
        workbench.open(run)  # a path that is not a run fails here, in one line
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    _check_port_free(host, port)
    app = files("apps.dashboard").joinpath("app.py")  # layer 6, run as its own process: never imported here
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port), "--server.address", host,
           "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal", "--logger.level", "error", "--", *runs]
    typer.echo(f"dashboard of {', '.join(runs)} at http://{host}:{port} (Ctrl-C stops it)")
    # SIGTERM (`kill`, a service manager) and SIGHUP (its terminal closed) stop the server as Ctrl-C does: else
    # Streamlit outlives this process, holding the port.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
    typer.echo("dashboard stopped")


def _check_port_free(host: str, port: int) -> None:
    import socket

    from workbench.errors import UsageError

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"--port {port} on {host} is not available ({e.strerror}); pick another with --port N") from None


if __name__ == "__main__":
    app()
