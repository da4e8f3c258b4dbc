"""The package's import structure: no circle among its modules, no import of the package root from inside it,
every module importable on its own, and the Hub layer and plotting free of the schedule families."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mlrsnet_hf

PACKAGE = "mlrsnet_hf"
ROOT = Path(mlrsnet_hf.__file__).parent


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (subpackages included)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([PACKAGE, *parts])] = path
    return modules


MODULES = module_files()


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST, type_checking: bool = False):
    """Every import statement, inside functions and classes too; under ``if TYPE_CHECKING:`` only with
    ``type_checking``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and is_type_checking(node) and not type_checking:
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, type_checking: bool = False) -> list[tuple[str, int, bool]]:
    """``(imported package module, line, is 'from <package root> import X' of a non-module X)`` for ``name``."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found = []
    for node in import_nodes(ast.parse(path.read_text(encoding="utf-8")), type_checking):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, False) for a in node.names if a.name.split(".")[0] == PACKAGE]
            continue
        if node.level:
            base = here.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != PACKAGE:
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in MODULES:  # `from .pkg import module`: the module itself
                found.append((sub, node.lineno, False))
            else:  # `from .module import name`: the module; from the package root: an import running back up
                found.append((target, node.lineno, target == PACKAGE))
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_no_import_of_the_package_root_from_inside():
    offenders = [
        f"{MODULES[name].relative_to(ROOT.parent)}:{line}"
        for name, edges in GRAPH.items()
        if name != PACKAGE
        for target, line, root_import in edges
        if root_import or target == PACKAGE
    ]
    assert not offenders, f"imports of the package root from inside it: {offenders}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    # Imports inside functions count: they only hide a circle, and so do type-checking imports (a circle of types
    # is a circle of concepts). The package root importing its modules is not a cycle (modules do not import the
    # root, checked above).
    for edges_of in (GRAPH, {name: imports_of(name, path, type_checking=True) for name, path in MODULES.items()}):
        graph = {name: {t for t, _, _ in edges if t != name and t != PACKAGE} for name, edges in edges_of.items()}
        assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target, _, _ in GRAPH.get(todo.pop(), []):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


FAMILIES = (f"{PACKAGE}.mlrsnet", f"{PACKAGE}.lr_controller")


def is_family(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FAMILIES)


def test_hub_knows_no_family_and_plotting_imports_nothing():
    assert not {m for m in reaches(f"{PACKAGE}.hub") if is_family(m)}
    assert f"{PACKAGE}.plotting" not in reaches(f"{PACKAGE}.hub")
    assert not GRAPH[f"{PACKAGE}.plotting"], "plotting imports from the package at runtime"


def test_the_core_imports_no_family_it_asks_the_registry():
    """Trainer, callback, drivers, publishing, provenance, plotting, Hub layer...: no import of a family's modules
    (type-checking imports aside); only the CLI's convert-official command imports MLR-SNet's converter, and the
    package root imports the families to register them."""
    allowed = {(f"{PACKAGE}.cli", f"{PACKAGE}.mlrsnet.official")}
    core = [m for m in MODULES if m != PACKAGE and not is_family(m) and not m.startswith(f"{PACKAGE}.experiments")]
    offenders = [
        (name, target)
        for name in core
        for target, _, _ in GRAPH[name]
        if is_family(target) and (name, target) not in allowed
    ]
    assert not offenders, f"core modules importing a family: {offenders}"


@pytest.mark.slow  # one fresh interpreter per module; the import graph checks above run by default
@pytest.mark.parametrize("module", [m for m in MODULES if m != PACKAGE and ".metric_modules." not in m])
def test_each_module_imports_alone(module):
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_no_pyplot_and_no_backend_switch_in_the_package():
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                assert not any("pyplot" in a.name for a in node.names), f"{name}:{node.lineno} imports pyplot"
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(a.name for a in node.names)]
                assert not any("pyplot" in n for n in names), f"{name}:{node.lineno} imports pyplot"
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use":
                target = node.func.value
                assert not (isinstance(target, ast.Name) and target.id in {"matplotlib", "mpl"}), (
                    f"{name}:{node.lineno} switches the matplotlib backend"
                )


@pytest.mark.parametrize(
    "old, new",
    [
        ("mlrsnet_hf.schedule", "mlrsnet_hf.mlrsnet.schedule"),
        ("mlrsnet_hf.network", "mlrsnet_hf.mlrsnet.network"),
        ("mlrsnet_hf.lr_controller_driver", "mlrsnet_hf.lr_controller.driver"),
    ],
)
def test_old_module_paths_warn_and_are_the_moved_modules(old, new):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}; the old path will be removed"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    # the module keeps its own identity: its spec, name and package are the new path's
    assert (module.__spec__.name, module.__name__, module.__package__) == (new, new, new.rpartition(".")[0])


def test_setup_ships_every_subpackage():
    """setup.py lists its packages: a new subpackage left out would be missing from a wheel (editable installs hide
    it)."""
    listed = set(ast.literal_eval(next(
        kw.value for node in ast.walk(ast.parse((ROOT.parent / "setup.py").read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
        for kw in node.keywords if kw.arg == "packages"
    )))  # fmt: skip
    found = {".".join([PACKAGE, *p.parent.relative_to(ROOT).parts]) for p in ROOT.rglob("__init__.py")}
    assert found <= listed, f"subpackages missing from setup.py's packages: {sorted(found - listed)}"
