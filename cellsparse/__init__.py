"""cellsparse's torch-free base: what every layer above shares (Pareto maths first; errors, the
run-directory layout and objective metadata belong here as they move down).

Importing it pulls in numpy only, never torch, Ray, Optuna or plotly.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellsparse")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"
