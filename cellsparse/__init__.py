"""cellsparse's torch-free base: what every layer above shares. The Pareto maths, the facts about
objectives and strategies (kept in one ``Registry`` kind), the base error, atomic writes and JSON
records, and the run directory (``rundir``: its layout, the trials table, its reader and writer),
which the search writes and the report and export read.

Importing ``cellsparse`` pulls in numpy only; ``cellsparse.rundir`` adds pandas, PyYAML and Optuna.
Nothing here imports torch, Ray or plotly.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellsparse")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"
