"""The import graph of the whole ``dsb`` package has no cycle.

Every ``import dsb...`` / ``from dsb... import`` (and relative import) in every module is an
edge, at module level or inside a function alike: a function-level import only defers a
cycle, it does not remove it. ``from dsb.x import y`` is an edge to the module
``dsb.x.y`` when that module exists, else to ``dsb.x``. The implicit import of a parent
package (``dsb.x`` runs before ``dsb.x.y``) is not an edge: a package ``__init__`` that
imports its own submodules would otherwise be a cycle with each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from dsb_testing import ROOT

PACKAGE = ROOT / "dsb"

# Import cycles allowed by exception: none, and it should stay so. An entry would be the
# import (importer, imported) that closes a cycle, with the reason; the test drops those
# edges and then requires an acyclic graph, and an entry whose import no longer exists
# fails the test.
KNOWN_CYCLES: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: {imported dsb modules}}`` for every ``.py`` file under ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name

    def resolve(name: str) -> str | None:
        # The longest prefix of ``name`` that is a module of the package.
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            cand = ".".join(parts[:i])
            if cand in files:
                return cand
        return None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" for a in node.names]
            for t in targets:
                if t == top or t.startswith(top + "."):
                    dep = resolve(t)
                    if dep is not None and dep != mod:
                        graph[mod].add(dep)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan: the components of more than one module (each holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph: dict[str, set[str]], comp: frozenset[str]) -> list[str]:
    """One cycle through the component, as ``[a, b, ..., a]``."""
    start = min(comp)
    prev = {start: None}
    queue = [start]
    while queue:  # BFS back to ``start`` inside the component
        v = queue.pop(0)
        for w in sorted(graph[v] & comp):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")


def describe(graph, comps) -> str:
    return "\n".join(
        f"{' -> '.join(a_cycle(graph, c))}  (all of: {', '.join(sorted(c))})" for c in comps
    )


def test_import_graph_helpers_find_a_planted_cycle(tmp_path):
    pkg = tmp_path / "dsb"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from dsb.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (pkg / "c.py").write_text("import dsb.a\nimport numpy\n")
    graph = import_graph(pkg)
    assert graph == {
        "dsb": set(),
        "dsb.a": {"dsb.sub.b"},
        "dsb.sub": {"dsb.sub.b"},
        "dsb.sub.b": {"dsb.c"},
        "dsb.c": {"dsb.a"},
    }
    (comp,) = strongly_connected(graph)
    assert comp == {"dsb.a", "dsb.sub.b", "dsb.c"}
    assert a_cycle(graph, comp) == ["dsb.a", "dsb.sub.b", "dsb.c", "dsb.a"]


def test_dsb_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph.get("dsb.plots"), "the graph missed dsb.plots' imports"
    stale = [e for e in KNOWN_CYCLES if e[1] not in graph.get(e[0], ())]
    assert not stale, f"KNOWN_CYCLES imports that no longer exist, remove them: {stale}"
    for a, b in KNOWN_CYCLES:
        graph[a].discard(b)
    comps = strongly_connected(graph)
    assert not comps, "import cycles in dsb:\n" + describe(graph, comps)
