"""No import circles inside the package: every module of ``iggt_lightning`` and of the built-in plugins (the
repository's ``heads/``, installed as ``iggt_lightning.heads``) is parsed, not imported, and every import of a
package module is an edge: module level and inside functions, relative and absolute, and
``importlib.import_module`` with a literal name (or a module-level string constant), since a lazy or dynamic
import is still a dependency. A cycle means two modules each need the other, i.e. one owner too few."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "iggt_lightning"
# (folder in the repository, the package name it is installed as)
SOURCES = ((ROOT / "iggt_lightning", PACKAGE), (ROOT / "heads", f"{PACKAGE}.heads"))

# Cycles accepted on purpose, each as the sorted tuple of its modules, with the reason. Keep it empty.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def package_modules() -> dict[str, Path]:
    """Dotted module name -> its file, for every .py file of the package and the built-in plugins."""
    modules = {}
    for folder, name in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([name, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """The package modules one file imports. ``if TYPE_CHECKING:`` blocks are left out: they never run."""

    def __init__(self, module: str, is_package: bool, known: set[str], constants: dict[str, str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known, self.constants, self.found = known, constants, set()

    def _add(self, name: str) -> None:
        # the nearest enclosing package module (``import a.b.c`` where c is a class is an import of a.b)
        while name and name not in self.known:
            name = name.rpartition(".")[0]
        if name:
            self.found.add(name)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != PACKAGE:
            return
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            # ``from pkg import submodule`` needs the submodule (pkg is its parent, imported anyway);
            # ``from pkg import name`` needs pkg
            self._add(sub if sub in self.known else source)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            name = arg.value if isinstance(arg, ast.Constant) else self.constants.get(getattr(arg, "id", ""))
            if isinstance(name, str) and name.split(".")[0] == PACKAGE:
                self._add(name)
        self.generic_visit(node)


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments (a dynamic import may name its module through one)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        visitor = _Imports(name, path.name == "__init__.py", known, _string_constants(tree))
        visitor.visit(tree)
        graph[name] = visitor.found - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component of more than one module (Tarjan's
    algorithm, iteratively)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    previous = {start: None}
    queue = [start]
    for node in queue:
        for child in sorted(graph[node] & component):
            if child == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")  # pragma: no cover


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert f"{PACKAGE}.registry" in graph and f"{PACKAGE}.heads.camera" in graph   # the sources were found
    cycles = [c for c in find_cycles(graph) if tuple(sorted(set(c))) not in KNOWN_CYCLES]
    assert not cycles, "import cycle(s), each module imports the next:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_kind_of_import_is_an_edge(tmp_path):
    """The parser itself: relative, absolute, inside functions, dynamic; TYPE_CHECKING and outside names are not."""
    source = '''
import os
from typing import TYPE_CHECKING
from . import b
from .c import thing
import iggt_lightning.d
PLUGINS = "iggt_lightning.e"
if TYPE_CHECKING:
    from .f import Type
def later():
    from ..g import x
    import importlib
    importlib.import_module(PLUGINS)
'''
    known = {f"{PACKAGE}.{n}" for n in ("pkg.a", "pkg.b", "pkg.c", "d", "e", "f", "g")}
    tree = ast.parse(source)
    visitor = _Imports(f"{PACKAGE}.pkg.a", False, known, _string_constants(tree))
    visitor.visit(tree)
    assert visitor.found == {f"{PACKAGE}.{n}" for n in ("pkg.b", "pkg.c", "d", "e", "g")}


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
])
def test_find_cycles(graph, expected):
    assert find_cycles(graph) == expected


def test_what_is_named_instead_of_imported_exists():
    """Modules below others name their classes by string (the registry its plugins' base classes, stored_state
    the training module) so as not to import them back; the names must stay right."""
    from iggt_lightning import registry, stored_state
    from iggt_lightning.head import Head
    from iggt_lightning.module import IGGTLitModule
    from iggt_lightning.postprocessor import PostProcessor

    assert stored_state._module_class() == registry.qualified_name(IGGTLitModule)
    assert registry._imported_class(registry.HEADS.base) is Head
    assert registry._imported_class(registry.POSTPROCESSORS.base) is PostProcessor
