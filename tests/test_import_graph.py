"""The floors of the house read one way: no import circle inside `kdharness`, the registry a
leaf, `ickd_plugin` never importing its host and `kdharness` never importing its plugin.

The graph is read from the source (every ``import`` statement, function-level ones included),
not from ``sys.modules``: a late import inside a function closes a circle just as surely,
it only hides it until that function runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package: str, root: Path = REPO) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name, not ``__init__``)."""
    return {_module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its body.

    ``from a.b import c`` points at ``a.b.c`` when that is a module, else at ``a.b``: importing
    a submodule runs its parent packages' ``__init__`` too, but that is Python's loading order,
    not a dependency the code chose, so parents are not counted as edges.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                source = _resolve_relative(module, is_package, node.level, node.module)
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]
        else:
            continue
        for name in names:
            # `import a.b.c` with a.b.c not ours (e.g. an attribute path) still points at the
            # longest prefix that is one of our modules.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(package: str, root: Path = REPO) -> dict[str, set[str]]:
    modules = package_modules(package, root)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


# -- the checker itself, on graphs whose answer is known by hand ----------------------------
def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no circle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_function_level_and_relative_imports_are_edges(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from pkg.high import g\n")
    (pkg / "high.py").write_text("from . import low\nimport pkg.sub.leaf as leaf\n")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("from .. import low\n")
    graph = import_graph("pkg", tmp_path)
    assert graph == {
        "pkg": set(),
        "pkg.low": {"pkg.high"},
        "pkg.high": {"pkg.low", "pkg.sub.leaf"},
        "pkg.sub": {"pkg.sub.leaf"},
        "pkg.sub.leaf": {"pkg.low"},
    }
    assert find_cycle(graph) == ["pkg.high", "pkg.low", "pkg.high"]


# -- the real house ---------------------------------------------------------------------------
def test_kdharness_has_no_import_circle():
    graph = import_graph("kdharness")
    assert len(graph) > 40  # the walk really read the package
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_registry_is_a_leaf():
    assert import_graph("kdharness")["kdharness.registry"] == set()


def test_config_does_not_import_the_floors_above_it():
    """The config tree is read by everything; it may only look at the registries."""
    assert import_graph("kdharness")["kdharness.config"] <= {"kdharness.registry"}


def test_ickd_plugin_never_imports_kdharness():
    for name, path in package_modules("ickd_plugin").items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            assert not any(t == "kdharness" or t.startswith("kdharness.") for t in targets), (name, targets)


def test_ickd_plugin_has_no_import_circle():
    """The plugin's rooms are floors too (docs/architecture.md): the bank, its view, pass, files
    and collectives each import only what lies below them."""
    graph = import_graph("ickd_plugin")
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_kdharness_never_imports_ickd_plugin():
    """The host knows its plugins only through the `kdharness.plugins` entry point, never by name;
    whatever measures host and plugin together (the benchmarks) lives with the tools."""
    host, plugin = package_modules("kdharness"), set(package_modules("ickd_plugin"))
    assert len(plugin) > 10  # the walk really read the plugin
    known = set(host) | plugin
    for name, path in host.items():
        assert not imports_of(name, path, known) & plugin, (name, sorted(imports_of(name, path, known) & plugin))
