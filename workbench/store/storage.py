"""Locating a run: a local folder or an `s3://bucket/prefix` URL, as an Icechunk repository."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import icechunk

from workbench.errors import ReadFailed, RunNotFound, UsageError, first_line

# Icechunk warns on every open of a local repository that concurrent commits are unsafe; the run store
# already allows one committer per run (see ARCHITECTURE.md), so only errors are worth showing.
icechunk.set_logs_filter(os.environ.get("ICECHUNK_LOG", "icechunk=error"))


def storage_for(location: str | os.PathLike) -> icechunk.Storage:
    """Icechunk storage for a local path or an `s3://bucket/prefix` URL (credentials from the environment)."""
    if not isinstance(location, (str, os.PathLike)):
        raise UsageError(f"a run location is a folder path or an s3://bucket/prefix URL, not {location!r}")
    text = os.fspath(location)
    url = urlparse(text)
    if url.scheme == "s3":
        if not url.netloc:
            raise UsageError(f"{text!r} names no bucket; write s3://BUCKET/PREFIX")
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        return icechunk.s3_storage(
            bucket=url.netloc,
            prefix=url.path.strip("/") or None,
            endpoint_url=endpoint,
            allow_http=bool(endpoint and endpoint.startswith("http://")),
            from_env=True,
        )
    path = local_path(location)
    if path is None:
        raise UsageError(f"unsupported run location {text!r}: use a local folder or s3://bucket/prefix")
    return icechunk.local_filesystem_storage(str(path))


def local_path(location: str | os.PathLike) -> Path | None:
    """The folder of a local run (a path or file:// URL), None for object storage."""
    text = os.fspath(location)
    url = urlparse(text)
    if url.scheme not in ("", "file"):
        return None
    return Path(url.path if url.scheme else text).expanduser().absolute()


def open_repository(location: str | os.PathLike) -> icechunk.Repository:
    """The existing repository at `location`, or `RunNotFound`."""
    storage = storage_for(location)
    path = local_path(location)
    if path is not None and path.exists() and not path.is_dir():
        raise RunNotFound(f"{os.fspath(location)} is a file, not a run; give a run folder or s3://bucket/prefix")
    if (path is not None and not path.exists()) or not repository_exists(storage, location):
        raise RunNotFound(f"{os.fspath(location)} is not a run (no Icechunk repository there); "
                          "create one with `wb train` or `wb import hf`")
    return icechunk.Repository.open(storage)


def repository_exists(storage: icechunk.Storage, location: str | os.PathLike) -> bool:
    """Whether `storage` holds a repository; a missing bucket or an unreachable endpoint is a one-line error."""
    try:
        return icechunk.Repository.exists(storage)
    except icechunk.IcechunkError as e:
        text = os.fspath(location)
        if "NoSuchBucket" in str(e):
            raise RunNotFound(f"{text}: bucket {urlparse(text).netloc!r} does not exist at "
                              f"{os.environ.get('AWS_ENDPOINT_URL') or 'AWS S3'}; create it first") from None
        raise ReadFailed(text, None, _first_error(e)) from None


def _first_error(e: Exception) -> str:
    """The innermost cause Icechunk reports (its last `->` line), or its first line."""
    causes = [line.split("->", 1)[1].strip() for line in str(e).splitlines() if "->" in line]
    return causes[-1] if causes else first_line(e)


def check_new_location(location: str | os.PathLike) -> None:
    """`UsageError` unless a new run can be created at `location`: a new or empty folder, or object storage
    without a run. Creates nothing."""
    path = local_path(location)
    if path is None:
        if repository_exists(storage_for(location), location):
            raise UsageError(f"{os.fspath(location)} already holds a run; open it with workbench.open() instead")
        return
    if not path.exists():
        return
    if not path.is_dir():
        raise UsageError(f"{os.fspath(location)} is a file; give a new folder (or s3://bucket/prefix) for the run")
    if any(path.iterdir()):
        if repository_exists(storage_for(location), location):
            raise UsageError(f"{os.fspath(location)} already holds a run; open it with workbench.open() instead")
        raise UsageError(f"{os.fspath(location)} exists and is not empty; give a new folder for the run")


# Manifests (Icechunk's chunk-reference files) split along `step`: a checkpoint's commit rewrites the references
# of at most this many steps per array, not of the whole trajectory, and a reader of a few steps fetches only
# their splits. The setting is saved in the repository's config, so every later writer follows it.
STEPS_PER_MANIFEST = 32


def create_repository(location: str | os.PathLike) -> icechunk.Repository:
    """A new, empty repository at `location`; refuses to reuse a non-empty local folder or an existing run."""
    check_new_location(location)
    split = icechunk.ManifestSplittingConfig.from_dict({
        icechunk.ManifestSplitCondition.AnyArray(): {icechunk.ManifestSplitDimCondition.DimensionName("step"):
                                                     STEPS_PER_MANIFEST}})
    repo = icechunk.Repository.create(storage_for(location), config=icechunk.RepositoryConfig(
        manifest=icechunk.ManifestConfig(splitting=split)))
    repo.save_config()
    return repo


def bytes_on_disk(location: str | os.PathLike) -> int | None:
    """Total size of a local run's files (None for object storage)."""
    root = local_path(location)
    return None if root is None else sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
