"""The package layers, enforced: imports point down, never in a circle, and the heavy libraries stay
in the modules that need them.

    base          cellsparse                       torch-free: Pareto maths, objective and strategy facts,
                                                   the base error, the run directory
    space/models  search_space, objectives         models, the space, measures
    engine        runner (but the applications)    trial, data, driver, backends, export artefacts
    applications  runner.search/export/predict/..., runner.data.builders, reports

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
APPLICATIONS = ("runner.search", "runner.export", "runner.predict", "runner.modelcard", "runner.cli", "runner.run",
                "runner.data.builders")
LAYERS = ("base", "space/models", "engine", "applications")
#: What a function may import for itself: heavy libraries one path needs (and the one module that wraps
#: Ray), so that importing a module does not load them for every other path.
DEFERRED = ("ray", "runner.engine.ray_tune", "onnx", "onnx_ir", "onnxruntime", "onnxscript", "plotly", "tifffile",
            "optuna_dashboard", "pyarrow")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def layer(module: str) -> int:
    top = module.split(".")[0]
    if top == "cellsparse":
        return 0
    if top in ("search_space", "objectives"):
        return 1
    if top == "reports" or any(module == a or module.startswith(a + ".") for a in APPLICATIONS):
        return 3
    return 2


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
            names += [source] + [f"{source}.{alias.name}" for alias in node.names]
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


def test_the_four_packages_form_no_cycle() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for a, targets in project_imports().items():
        for b in targets:
            if a.split(".")[0] != b.split(".")[0]:
                edges[a.split(".")[0]].add(b.split(".")[0])
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


def test_every_application_exists() -> None:
    """The layer list names modules that exist: a renamed application would silently change layer."""
    assert [a for a in APPLICATIONS if a not in MODULES] == []
