"""The search space: YAML specs, the model space they describe, and sampling from it.

Public API: ``build_model``, ``default_config``, ``load_space``, ``SearchSpace``, ``strategy_names``.
Importing this package pulls in torch and pyyaml, never Ray or plotly.
"""

from search_space.build import build_model, default_config
from search_space.spec import SearchSpace, load_space
from search_space.strategies import strategy_names

__all__ = ["SearchSpace", "build_model", "default_config", "load_space", "strategy_names"]
