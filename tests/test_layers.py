"""The packages form layers: every import (lazy ones in functions included) runs downward, and
no file imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import e2urec

SHARED = {"e2urec", "config", "maths", "memory", "weights"}
BELOW_API = SHARED | {"data", "model", "methods", "metrics", "evals"}
# Each top-level part of the package and the parts it may import (besides itself).
MAY_IMPORT = {
    "e2urec": set(),  # modules read __version__ from it: it imports nothing of its own
    "config": {"e2urec"},
    "maths": {"e2urec"},
    "memory": {"e2urec"},
    "weights": {"e2urec"},
    "data": SHARED,
    "metrics": SHARED,
    "model": SHARED | {"data", "metrics"},  # selection by valid AUC
    "methods": SHARED | {"data", "model"},
    "evals": SHARED | {"data", "model", "metrics"},  # judging never runs a method
    "api": BELOW_API,
    "bench": BELOW_API | {"api"},
    "deploy": BELOW_API,  # verification judges through evals/, not api
    "service": BELOW_API | {"api", "deploy"},
    "cli": BELOW_API | {"api", "bench", "deploy", "service"},
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name of every module under the package folder `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph(root: Path) -> dict[str, set[tuple[str, int]]]:
    """{module: {(imported module, line)}} for imports of the package's own modules, wherever
    they stand in the file; `from pkg import name` counts as importing pkg.name when that is a
    module, else pkg itself."""
    names = module_names(root)
    graph: dict[str, set[tuple[str, int]]] = {}
    for module, path in names.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {(a.name, node.lineno) for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([source] if source else []))
                if source not in names:
                    continue
                for alias in node.names:
                    target = f"{source}.{alias.name}"
                    edges.add((target if target in names else source, node.lineno))
    return graph


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def against_layers(graph: dict, may_import: dict) -> list[str]:
    wrong = []
    for module, edges in graph.items():
        for target, line in sorted(edges):
            here, there = part(module), part(target)
            if here not in may_import:
                wrong.append(f"{module}: not placed in a layer")
            elif there != here and there not in may_import[here]:
                wrong.append(
                    f"{module} line {line} imports {target} ({here} may not import {there})"
                )
    return wrong


def circles(graph: dict) -> list[list[str]]:
    """Each import circle found by depth-first search, as the modules along it."""
    found, state = [], {}

    def visit(module, trail):
        state[module] = "open"
        for target, _ in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_import_runs_down_the_layers():
    graph = import_graph(Path(e2urec.__file__).parent)
    assert set(map(part, graph)) <= set(MAY_IMPORT), "a new part of the package needs a layer"
    assert against_layers(graph, MAY_IMPORT) == []


def test_no_module_imports_itself_back():
    assert circles(import_graph(Path(e2urec.__file__).parent)) == []


def test_the_checks_see_lazy_relative_and_circular_imports(tmp_path):
    pkg = tmp_path / "e2urec"
    (pkg / "data").mkdir(parents=True)
    (pkg / "model").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "data" / "prompt.py").write_text("def f():\n    from e2urec.model import net\n")
    (pkg / "model" / "net.py").write_text("from . import head\n")
    (pkg / "model" / "head.py").write_text("from e2urec.model.net import x\n")
    graph = import_graph(pkg)
    assert graph["e2urec.data.prompt"] == {("e2urec.model.net", 2)}
    assert against_layers(graph, MAY_IMPORT) == [
        "e2urec.data.prompt line 2 imports e2urec.model.net (data may not import model)"
    ]
    assert circles(graph) == [["e2urec.model.net", "e2urec.model.head", "e2urec.model.net"]]
