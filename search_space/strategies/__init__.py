"""Strategy models, one module each; importing this package registers all of them."""

from search_space.strategies.base import (
    CellClassifier,
    ParamSpec,
    StrategyInfo,
    get_strategy,
    is_sparse,
    register_strategy,
    strategy_names,
)

# Each import below registers one strategy (kept in the order reports list them).
# isort: off
from search_space.strategies import sparse_topk  # noqa: F401
from search_space.strategies import tnet_traversal  # noqa: F401
from search_space.strategies import span_pyramid  # noqa: F401
from search_space.strategies import dense_cnn  # noqa: F401
from search_space.strategies import dense_vit  # noqa: F401
# isort: on

__all__ = [
    "ParamSpec",
    "CellClassifier",
    "StrategyInfo",
    "get_strategy",
    "is_sparse",
    "register_strategy",
    "strategy_names",
]
