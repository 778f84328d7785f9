"""The layer table of ARCHITECTURE.md, enforced: every import of every module (module level, inside functions,
under TYPE_CHECKING) points to its own layer or one it may import; and no import cycle between modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("workbench", "training", "probes", "apps")

# Module (or package prefix) -> layer; the longest matching prefix wins.
LAYER_OF = {
    "apps": 6,
    "workbench": 5,  # workbench/__init__.py
    "workbench.cli": 5,
    "workbench.api": 5,  # the Run / Checkpoint facade that workbench.open returns
    "workbench.figures": 5,  # the dashboard's figures, for notebooks too
    "probes": 4,
    "workbench.analyses": 4,  # the built-in analyses, registered by entry point as probes are
    "workbench.analysis": 3,
    "workbench.models": 2,
    "training": 1,
    "workbench.store": 0,
    "workbench.errors": 0,  # the store's errors, shared by every layer
}
# What each layer may import besides its own layer: "may import" of the table.
MAY_IMPORT = {
    6: {"workbench", "training", "probes", "apps"},
    5: {"workbench", "training", "probes"},
    4: {"workbench.analysis", "workbench.models", "workbench.store", "workbench.errors", "training.model",
        "training.data.documents"},  # the corpus' ground truth: what the probes' built-in labels mean
    3: {"workbench.models", "workbench.store", "workbench.errors"},
    2: {"training.model", "workbench.store", "workbench.errors"},
    1: {"workbench.store", "workbench.errors"},
    0: set(),
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = modules()


def ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def layer(module: str) -> int:
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return LAYER_OF[best]


def allowed(importer: str, target: str) -> bool:
    own = layer(importer)
    if layer(target) == own and target.split(".")[0] == importer.split(".")[0]:
        return True
    return any(target == p or target.startswith(p + ".") for p in MAY_IMPORT[own])


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, under TYPE_CHECKING) for every import statement of `module`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found += [(n, node.lineno, id(node) in typing_only) for n in names if ours(n)]
    return found


def test_the_table_covers_every_module():
    assert MODULES and all(layer(m) in MAY_IMPORT for m in MODULES)
    assert {"workbench.store.run", "workbench.analysis.runner", "training.model", "workbench.api"} <= MODULES.keys()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    bad = [f"line {line}: {target} (layer {layer(target)})" for target, line, _ in imports(module)
           if not allowed(module, target)]
    assert not bad, f"{module} (layer {layer(module)}) imports " + "; ".join(bad)


def test_no_import_cycles():
    """Between modules, counting imports inside functions (not those under TYPE_CHECKING, which never run)."""
    graph = {m: {t for t, _, typing in imports(m) if not typing and t in MODULES and t != m} for m in MODULES}
    sys.setrecursionlimit(10_000)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_check_catches_an_upward_import(tmp_path):
    """The rule is not vacuous: the store reaching into the analyses, as it once did, is refused."""
    assert not allowed("workbench.store.run", "workbench.analysis")
    assert not allowed("workbench.models.views", "training.config")
    assert not allowed("training.trainer", "workbench")
    assert allowed("workbench.analyses.loss", "workbench.models.capture")
    assert not allowed("workbench.analysis.plan", "workbench.analyses.weights")  # the engine names no analysis
    assert allowed("workbench.cli", "training.trainer")


def test_the_engine_loads_without_the_built_in_analyses():
    """The built-ins register through the entry point, when the registry is first asked, as plugins do."""
    import subprocess

    code = ("import sys, workbench.analysis as a; assert 'workbench.analyses' not in sys.modules; "
            "names = set(a.registry()); assert 'workbench.analyses.weights' in sys.modules; print(sorted(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert {"weights", "loss", "activations", "lens", "similarity", "memorization", "evaluation", "probes"} <= set(eval(out))
