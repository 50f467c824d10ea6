"""No import circles inside `stalwart`.

Every module of src/stalwart is parsed with `ast`; every import counts, including those under
`if TYPE_CHECKING:` and inside functions, because a circle hidden there is still a circle in
the design (two modules that each need the other cannot be understood, tested or split apart).
"""

from __future__ import annotations

import ast
from pathlib import Path

import stalwart

ROOT = Path(stalwart.__file__).parent


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, wherever in the file the import is.

    `from a.b import c` is an edge to `a.b.c` when that is a module, else to `a.b`. A parent
    package's `__init__` is not counted as imported by its submodules' imports: that is how
    packages work, not a design dependency.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        edges.update(t for t in targets if t in modules and t != name)
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_graph_sees_every_kind_of_import() -> None:
    # Guards the parser itself: lazy and TYPE_CHECKING imports must be edges.
    graph = _graph()
    assert "stalwart.client" in graph["stalwart.app"]  # `App.client()` imports it in a function
    assert "stalwart.engine.executor" in graph["stalwart.app"]  # under TYPE_CHECKING too
    assert len(graph) > 50


def _tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import one another (strongly connected, more than one)."""
    found: list[set[str]] = []
    for node in graph:
        if any(node in group for group in found):
            continue
        reach = _reachable(graph, node)
        group = {other for other in reach if node in _reachable(graph, other)}
        if group:
            found.append(group | {node})
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def test_no_import_cycles() -> None:
    graph = _graph()
    report = []
    # Every tangle, each with one of its circles: one failure shows all the work left.
    for group in _tangles(graph):
        inside = {name: graph[name] & group for name in group}
        circle = _cycle(inside)
        report.append(f"{sorted(group)}\n  e.g. {' -> '.join(circle or [])}")
    assert not report, "import cycles:\n" + "\n".join(report)
