"""The package's modules import each other without cycles: dependencies point down, from the command line to the
library, never back (module-level and in-function imports, and modules loaded by name)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"pyroib": ROOT / "pyroib", "pyroib.models": ROOT / "models", "pyroib.guides": ROOT / "guides"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = name.split(".")
                if node.level:
                    keep = len(base) - node.level + (1 if path.name == "__init__.py" else 0)
                    module = ".".join(base[:keep] + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                # importlib.import_module("pyroib.x") and command tables: a string naming a module is an edge,
                # even to a parent package
                if node.value in modules and node.value != name:
                    graph[name].add(node.value)
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_library_never_imports_the_command_line():
    graph = import_graph()
    library = [m for m in graph if not m.startswith("pyroib.cli") and m != "pyroib.__main__"]
    assert not [m for m in library if any(t.startswith("pyroib.cli") for t in graph[m])]


def test_every_public_name_resolves_to_its_module():
    import importlib

    import pyroib

    for name in pyroib.__all__:
        module, _, attribute = pyroib._EXPORTS[name].partition(":")
        assert getattr(pyroib, name) is getattr(importlib.import_module(f"pyroib.{module}"), attribute or name), name
    assert pyroib.fit is importlib.import_module("pyroib.train").train
    assert "fit" in dir(pyroib)


def test_every_subpackage_is_in_the_wheel():
    """setuptools installs only the packages pyproject.toml lists; an editable install would hide a missing one."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {
        ".".join(("pyroib", *init.parent.relative_to(ROOT / "pyroib").parts)).rstrip(".")
        for init in (ROOT / "pyroib").rglob("__init__.py")
    }
    assert present - listed == set()
