"""The package's layout holds: every import inside deepfake_kd (and app.py) goes to the same or
a lower layer, pipeline/ and serving/ never import training/, models/ knows no roles, and the
module import graph has no cycle. Imports inside functions count as much as top-level ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deepfake_kd"

# Lower layers never import higher ones. Within one layer, modules may import each other
# (the graph still may not cycle), except where FORBIDDEN says otherwise.
LAYERS = [
    {"deepfake_kd", "deepfake_kd.errors", "deepfake_kd.util", "deepfake_kd.limits"},
    {"deepfake_kd.models"},
    {"deepfake_kd.roles"},
    {"deepfake_kd.pipeline"},
    {"deepfake_kd.training", "deepfake_kd.serving"},
    {"deepfake_kd.tools"},
    {"deepfake_kd.cli", "deepfake_kd.__main__", "app"},
]
FORBIDDEN = [("deepfake_kd.serving", "deepfake_kd.training"),
             ("deepfake_kd.training", "deepfake_kd.serving"),
             ("deepfake_kd.pipeline", "deepfake_kd.training")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    found["app"] = ROOT / "app.py"
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (resolved: `from .x import y` names x.y when that is a
    module, else x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def graph() -> dict[str, set[str]]:
    found = sources()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{name}: in no layer; add it to LAYERS"
    return best[0]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_is_in_a_layer():
    for name in sources():
        layer(name)


def test_no_upward_imports():
    bad = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
           for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("importer,imported", FORBIDDEN)
def test_forbidden_imports(importer, imported):
    bad = [f"{a} imports {b}" for a, targets in graph().items() if within(a, importer)
           for b in targets if within(b, imported)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_models_know_no_roles():
    """models/ neither imports the role table nor names a role in its code (docstrings and
    comments may explain what a model is used for)."""
    for path in (PACKAGE / "models").glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                assert node.value not in ("teacher", "student"), f"{path.name}: {node.value!r}"
            if isinstance(node, (ast.Name, ast.Attribute)):
                word = node.id if isinstance(node, ast.Name) else node.attr
                assert word.lower() not in ("teacher", "student"), f"{path.name}: {word}"
    assert not any(within(b, "deepfake_kd.roles") for a, targets in graph().items()
                   if within(a, "deepfake_kd.models") for b in targets)


def test_the_cycle_check_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
