"""The registry of analyses: built-ins register when `workbench.analysis` is imported, plugins through the
entry point group `workbench.analyses` (each naming a module that registers analyses when imported)."""

from __future__ import annotations

import dataclasses
import functools

from workbench.analysis.base import KINDS, Analysis
from workbench.errors import UsageError

_REGISTRY: dict[str, type[Analysis]] = {}


def register(cls: type[Analysis]) -> type[Analysis]:
    """Class decorator: make `cls` runnable by name (`wb analyze --only NAME`)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name.islower():
        raise ValueError(f"{cls.__qualname__}.name must be a lower-case identifier, got {name!r}")
    if getattr(cls, "kind", None) not in KINDS:
        raise ValueError(f"{cls.__qualname__}.kind must be one of {KINDS}, got {getattr(cls, 'kind', None)!r}")
    if not dataclasses.is_dataclass(cls.Params):
        raise ValueError(f"{cls.__qualname__}.Params must be a dataclass")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"analysis {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


@functools.cache
def _load_plugins() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="workbench.analyses"):
        ep.load()


def registry() -> dict[str, type[Analysis]]:
    """Registered analyses by name: the built-ins and those of installed plugins."""
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Analysis]:
    analyses = registry()
    if name not in analyses:
        raise UsageError(f"unknown analysis {name!r}; valid analyses: {', '.join(analyses) or 'none'}")
    return analyses[name]


def resolve(names, params: dict[str, dict] | None = None) -> list[Analysis]:
    """Analysis instances for `names` (None: every registered one; a comma-separated string or a list)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(registry()) if not names else list(dict.fromkeys(names))
    params = dict(params or {})
    out = [get(n)(**params.pop(n, {})) for n in names]
    if params:
        raise UsageError(f"parameters given for {sorted(params)[0]!r}, which is not among the analyses to run "
                         f"({', '.join(names)})")
    return out
