"""The package's modules import one another without a cycle.

The rule: module A depends on module B when A imports B *anywhere* in its source, at the top or inside a
function or class.  A function-level ("lazy") import is how a cycle usually hides: it breaks the error at
import time, not the knot (``tap.py`` and the old ``workers.py`` imported each other that way, each from
inside a function).  Only imports under ``if TYPE_CHECKING:`` are left out, since they never run.

``from package import name`` depends on ``package.name`` when that is a module of the package, else on
``package`` itself (its ``__init__``); the parent packages a module's import runs implicitly are not edges
(every ``__init__`` here is empty, and a module cannot avoid its own package's).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.support import ROOT, module_names

PACKAGE = "ollama_proxy"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, however deeply nested, except the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                yield from _import_nodes(ast.Module(body=[branch], type_ignores=[]))
        else:
            yield from _import_nodes(node)


def dependencies(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The modules of the package that module ``name`` (at ``path``) imports, by the rule above."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
            continue
        base = node.module or ""
        if node.level:  # relative: from the module's own package, one level up per extra dot
            anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            if f"{base}.{alias.name}" in modules:
                found.add(f"{base}.{alias.name}")
            elif base in modules:
                found.add(base)
    found.discard(name)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: dependencies(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (a depth-first search)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "ollama_proxy.tap" in graph
    assert "ollama_proxy.config" in graph["ollama_proxy.tap"]  # the parser sees the package's imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_a_lazy_import_in_a_function_closes_a_cycle(tmp_path: Path) -> None:
    """The shape of the old ``tap.py`` ↔ ``workers.py`` pair: each imported the other inside a function."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "tap.py").write_text(
        "def make_service():\n    from pkg.workers import Supervisor\n    return Supervisor\n"
    )
    (package / "workers.py").write_text(
        "class Supervisor: ...\n\n\ndef worker_main():\n    from pkg.tap import make_service\n"
    )
    (package / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .. import tap\nif TYPE_CHECKING:\n    from pkg.sub import x\n"
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.leaf"] == {"pkg.tap"}  # relative imports resolve; TYPE_CHECKING ones do not count
    assert find_cycle(graph) == ["pkg.tap", "pkg.workers", "pkg.tap"]
    (package / "workers.py").write_text("class Supervisor: ...\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


def test_cycles_of_any_length_are_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
