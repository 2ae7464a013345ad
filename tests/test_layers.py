"""The package layers, enforced: imports point down, never in a circle, and the heavy libraries stay
in the modules that need them. A module's layer follows from its folder:

    base          cellsparse.*                     torch-free: Pareto maths, objective, strategy and
                                                   executor facts, the base error, the run directory
    space/models  search_space, objectives         models, the space, measures
    engine        runner/engine/, runner/data/     driver, trial, sampler, study, executors; the data
                                                   loaders (but runner/data/builders/)
    applications  the rest of runner/, reports     search, export, predict, the CLI, the data builders
    api           cellsparse (its __init__)        the public functions, loaded lazily from the layers below

Every import counts, at module level or inside a function (a function-level import hides a tie, it
does not cut it). A relative import is resolved to the module it names. Imports sit at module level,
but for the heavy optional libraries (``DEFERRED``) that only one path needs, each with its reason.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cellsparse", "search_space", "objectives", "runner", "reports")
ENGINE = ("runner.engine", "runner.data")
LAYERS = ("base", "space/models", "engine", "applications", "api")
#: What a function may import for itself: heavy libraries one path needs (and the one module that wraps
#: Ray), so that importing a module does not load them for every other path.
DEFERRED = ("ray", "runner.engine.ray_tune", "onnx", "onnx_ir", "onnxruntime", "onnxscript", "plotly", "tifffile",
            "optuna_dashboard", "pyarrow")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer(module: str) -> int:
    top = module.split(".")[0]
    if module == "cellsparse":
        return 4
    if top == "cellsparse":
        return 0
    if top in ("search_space", "objectives"):
        return 1
    if any(_under(module, e) for e in ENGINE) and not _under(module, "runner.data.builders"):
        return 2
    return 3


def imported_names(module: str, path: Path) -> list[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # a submodule by name (from cellsparse import rundir), else the module's name
                names.append(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    return names


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name resolves to its longest module prefix)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for name in imported_names(module, path):
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges[module].add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down_the_layers() -> None:
    edges = project_imports()
    upward = sorted(f"{a} ({LAYERS[layer(a)]}) imports {b} ({LAYERS[layer(b)]})"
                    for a, targets in edges.items() for b in targets if layer(b) > layer(a))
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_round_a_circle() -> None:
    assert cycles(project_imports()) == []


def test_the_packages_form_no_cycle() -> None:
    """Package to package, the API face (``cellsparse``'s __init__, which loads from every layer) aside."""

    def package(module: str) -> str:
        return "api" if module == "cellsparse" else module.split(".")[0]

    edges: dict[str, set[str]] = defaultdict(set)
    for a, targets in project_imports().items():
        for b in targets:
            if package(a) != package(b):
                edges[package(a)].add(package(b))
    seen = {pkg: set() for pkg in PACKAGES}
    for pkg in PACKAGES:  # everything reachable from pkg
        todo = list(edges[pkg])
        while todo:
            nxt = todo.pop()
            if nxt not in seen[pkg]:
                seen[pkg].add(nxt)
                todo += edges[nxt]
    assert [pkg for pkg in PACKAGES if pkg in seen[pkg]] == []


def test_ray_is_imported_by_its_executor_only() -> None:
    users = sorted(m for m, p in MODULES.items() if any(n == "ray" or n.startswith("ray.") for n in imported_names(m, p)))
    assert users == ["runner.engine.ray_tune"]


def test_the_base_and_the_space_load_without_the_heavy_libraries() -> None:
    code = ("import sys, cellsparse.pareto, cellsparse.objective_info, cellsparse.strategy_info; "
            "heavy = {'torch', 'optuna', 'ray', 'plotly', 'pandas'} & set(sys.modules); assert not heavy, heavy; "
            "import search_space; heavy = {'ray', 'plotly', 'optuna'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_run_directory_and_the_report_load_without_torch() -> None:
    code = ("import sys, cellsparse.rundir, reports.build; "
            "heavy = {'torch', 'ray'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def function_level_imports(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, the names it imports) of every import inside a function of ``path``."""
    found = []
    for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                found.append((node.lineno, tuple(alias.name for alias in node.names)))
            elif isinstance(node, ast.ImportFrom):
                source = "." * node.level + (node.module or "")
                found.append((node.lineno, tuple(f"{source}.{alias.name}" for alias in node.names)))
    return sorted(set(found))


def _deferred(name: str) -> bool:
    return any(name == allowed or name.startswith(allowed + ".") for allowed in DEFERRED)


def _says_why(lines: list[str], number: int) -> bool:
    """A comment with words on the import's line (a bare noqa does not count), or on the line before."""
    same = lines[number - 1].partition("#")[2]
    before = lines[number - 2].strip() if number >= 2 else ""
    return bool(re.search(r"[a-z]{3}", re.sub(r"noqa(:\s*[A-Z0-9, ]+)?", "", same))) or before.startswith("#")


def test_functions_import_only_heavy_optional_libraries_and_say_why() -> None:
    problems = []
    for path in sorted(MODULES.values()):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, names in function_level_imports(path):
            where = f"{path.relative_to(ROOT)}:{number} imports {', '.join(names)}"
            if not all(_deferred(name) for name in names):
                problems.append(f"{where} inside a function; import it at module level (or fix the cycle it hides)")
            elif not _says_why(lines, number):
                problems.append(f"{where} inside a function without saying why (a comment on that line or the one before)")
    assert not problems, "\n".join(problems)


def test_the_engine_is_its_folders() -> None:
    """The engine is runner/engine/ and runner/data/; nothing else in runner/ is imported by them, and
    runner/ holds no engine module outside them (a module there is an application)."""
    assert all(e in MODULES for e in ENGINE)
    engine = sorted(m for m in MODULES if layer(m) == 2)
    assert engine and all(m.startswith(ENGINE) for m in engine)
    assert "runner.engine.driver" in engine and "runner.engine.trial" in engine and "runner.search" not in engine


def test_executors_are_registered_by_name() -> None:
    """The built-in executors are Executor subclasses in the registry, under the names the space file
    accepts, with the facts declared for them."""
    from cellsparse.executor_info import declared_executors, executor_info
    from runner.engine.executors import Executor, executor_names, make_executor
    from search_space.spec import load_space

    assert executor_names()[:2] == ["ray", "optuna"] == declared_executors()[:2]  # a test may register more
    from runner.engine.executor import _EXECUTORS

    for name in executor_names():
        cls = _EXECUTORS.get(name)
        assert issubclass(cls, Executor) and cls.name == name and cls.info == executor_info(name)
    space = load_space(ROOT / "search_space" / "cells.yaml").with_overrides(backend="optuna")
    assert type(make_executor(space)).__name__ == "InProcessExecutor"


def test_the_search_names_no_backend() -> None:
    """runner/search.py reaches executors through the registry only: it imports no executor module and
    compares nothing with an executor's name."""
    from cellsparse.executor_info import declared_executors

    path = ROOT / "runner" / "search.py"
    executor_modules = {"runner.engine.in_process", "runner.engine.ray_executor", "runner.engine.ray_tune"}
    assert not executor_modules & set(imported_names("runner.search", path))
    names = set(declared_executors())
    compared = [ast.unparse(node) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Compare)
                and any(isinstance(c, ast.Constant) and c.value in names for c in [node.left, *node.comparators])]
    assert compared == []


def test_import_cellsparse_loads_no_heavy_library() -> None:
    """``import cellsparse`` gives the public API without loading torch, Optuna, Ray, plotly or pandas;
    each function loads its own on first use."""
    code = ("import sys, cellsparse; "
            "heavy = {'torch', 'optuna', 'ray', 'plotly', 'pandas'} & set(sys.modules); assert not heavy, heavy; "
            "names = ['search', 'load_run', 'Run', 'export', 'predict', 'build_report', 'UserError']; "
            "assert all(n in dir(cellsparse) for n in names); "
            "import runner.search, runner.run, runner.export, runner.predict, reports.build; "
            "assert cellsparse.search is runner.search.search and cellsparse.export is runner.run.export; "
            "assert cellsparse.predict is runner.predict.predict and cellsparse.build_report is reports.build.build_report; "
            "assert cellsparse.load_run is runner.run.load_run and cellsparse.Run is runner.run.Run")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
