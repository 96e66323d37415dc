"""The library's import graph: no cycles, imports point downward, no ComfyUI outside nodes/.

Every ``import`` / ``from ... import`` statement of every module under ``diffsketch/`` counts,
including those inside functions (the library imports heavy modules lazily, and a lazy import
cycle is still a cycle). A package's ``__init__`` importing its own children is how a package
re-exports; the implicit import of a parent package when a child is imported is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffsketch"

# Lower layers never import higher ones. The shared modules sit at the bottom, the pipeline
# stages above them, the command line on top.
SHARED = {"errors", "fileio", "images", "seeds", "plotting", "terminal", "distributed", "flow"}
STAGES = {"capture", "backends", "train", "distill", "styles", "eval"}
# stage -> the stages it may import (everything a stage needs from "later" in the pipeline
# would be an upward import)
STAGE_MAY_IMPORT = {
    "capture": set(),
    "styles": set(),
    "backends": {"capture"},
    "train": {"capture", "backends"},
    "distill": {"capture", "backends", "train"},
    "eval": {"capture", "backends", "train", "distill", "styles"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, name: str, path: Path) -> str:
    if node.level == 0:
        return node.module or ""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = here[: len(here) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(node, name, path)
                # "from package import module" imports the module; "from module import name" the module
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and not name.startswith(target + "."):
                    edges.add(target)
        graph[name] = edges
    return graph


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert {"diffsketch.cli", "diffsketch.distill.student", "diffsketch.eval.metrics.fid"} <= set(graph)
    # a known edge of each kind: relative, lazy (inside a function), "from package import module"
    assert "diffsketch.train.state" in graph["diffsketch.distill.student"]
    assert "diffsketch.eval.cli" in graph["diffsketch.cli"]
    assert "diffsketch.fileio" in graph["diffsketch.train.generator"]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_imports_the_command_line():
    importers = sorted(m for m, edges in import_graph().items() if "diffsketch.cli" in edges)
    assert importers == ["diffsketch.__main__"]  # python -m diffsketch, torchrun -m diffsketch


def _upward_imports(graph: dict[str, set[str]], layer: str) -> list[str]:
    allowed = SHARED if layer in SHARED else SHARED | STAGE_MAY_IMPORT[layer]
    return sorted(
        f"{module} -> {target}"
        for module, edges in graph.items()
        if _top(module) == layer
        for target in edges
        if _top(target) not in ("", layer) and _top(target) not in allowed
    )


@pytest.mark.parametrize("layer", sorted(SHARED | STAGES))
def test_imports_point_downward(layer):
    assert _upward_imports(import_graph(), layer) == []


def test_an_upward_import_is_reported():
    graph = {"diffsketch.fileio": {"diffsketch.train.state"}, "diffsketch.train.state": {"diffsketch.fileio"}}
    assert _upward_imports(graph, "fileio") == ["diffsketch.fileio -> diffsketch.train.state"]
    assert _upward_imports(graph, "train") == []


def test_no_comfyui_outside_nodes():
    comfy = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in comfy]
    assert offenders == []
