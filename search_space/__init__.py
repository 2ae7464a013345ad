"""The search space: YAML specs, the model space they describe, and sampling from it.

Public API: ``build_model``, ``default_config``, ``load_space``, ``SearchSpace``, ``strategy_names``.
They load on first use, so ``search_space.errors`` (needed by reports) imports without torch;
nothing here ever imports Ray or plotly.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "build_model": "search_space.build",
    "default_config": "search_space.build",
    "load_space": "search_space.spec",
    "SearchSpace": "search_space.spec",
    "strategy_names": "search_space.strategies",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'search_space' has no attribute {name!r}")
