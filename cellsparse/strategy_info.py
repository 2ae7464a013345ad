"""What every layer needs to know about strategies without loading a model, declared once: whether
each looks at part of each image (sparse) or all of it (dense), and the key every one takes for its
input resolution (``search_space.resolution``).

Torch-free, so the run directory's trials table and the report tell sparse from dense trials without
loading a model. The models live in ``search_space.strategies``: ``register_strategy`` takes a
built-in strategy's kind from here, and declares a plugin's (its ``sparse=`` argument) in the same
call, as ``cellsparse.objective_info`` does for objectives.
"""

from __future__ import annotations

from cellsparse.registry import Registry

INPUT_SIZE_KEY = "input_size"

_SPARSE: Registry[bool] = Registry("strategy", added="declared")


def declare_strategy(name: str, *, sparse: bool) -> None:
    """Record that strategy ``name`` is sparse or dense; a name declared twice is an error."""
    _SPARSE.add(name, bool(sparse))


def declared_strategies() -> list[str]:
    """Every declared strategy, in declaration order."""
    return _SPARSE.names()


def is_sparse(name: object) -> bool | None:
    """Whether strategy ``name`` looks at part of each image; None when no such strategy is declared."""
    return _SPARSE.find(name)


for _name, _sparse in (
    ("sparse_topk", True),
    ("tnet_traversal", True),
    ("span_pyramid", True),
    ("dense_cnn", False),
    ("dense_vit", False),
):
    declare_strategy(_name, sparse=_sparse)
