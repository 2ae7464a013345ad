"""cellsparse: search sparse-attention cell classifiers for accuracy against cost, and deploy the one
you pick. The public API, one import::

    import cellsparse

    run = cellsparse.search("search_space/cells.yaml", trials=10, backend="optuna", out="runs/x")
    run = cellsparse.load_run("runs/x")                 # a finished run directory: trials, front, picks
    export_dir = cellsparse.export("runs/x")            # the knee of the front, checked against eager
    result = cellsparse.predict(export_dir, images)     # class names and probabilities
    cellsparse.build_report("runs/x")                   # report.html again

Each name is loaded when first used, so ``import cellsparse`` stays light (numpy only; no torch,
Ray, Optuna or plotly). The command line (``cellsparse search|export|predict|report``) is a thin
layer over these functions. Bad input raises :class:`cellsparse.UserError`, whose message is the one
line the commands print.

The subpackage ``cellsparse.*`` is also the project's torch-free base (the Pareto maths, the facts
about objectives, strategies and executors, the run directory); the layers above it are
``search_space`` and ``objectives``, the engine (``runner.engine``, ``runner.data``), and the
applications (``runner.search``, ``runner.export``, ``runner.predict``, ``reports``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from cellsparse.errors import UserError

if TYPE_CHECKING:  # what the names below are, for type checkers and IDEs; loaded lazily at run time
    from reports.build import build_report
    from runner.predict import predict
    from runner.run import Run, export, load_run
    from runner.search import search

try:
    __version__ = version("cellsparse")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

#: public name -> (module, attribute): imported on first use.
_API = {
    "search": ("runner.search", "search"),
    "load_run": ("runner.run", "load_run"),
    "Run": ("runner.run", "Run"),
    "export": ("runner.run", "export"),
    "predict": ("runner.predict", "predict"),
    "build_report": ("reports.build", "build_report"),
}

__all__ = ["Run", "UserError", "__version__", "build_report", "export", "load_run", "predict", "search"]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'cellsparse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
