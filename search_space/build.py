"""Config dict -> model: the one place a strategy name is resolved to a network.

A config is flat and JSON-serialisable and always holds ``strategy``. Keys the strategy declares
and the config leaves out take the registered defaults; keys it does not declare (training keys
such as ``lr``, k-rule keys such as ``k_rule``) pass through untouched, so a model may read the
k-rule keys it needs. The same config (and the same torch seed) rebuilds the same network, which is
what checkpoints, reports and export rely on.
"""

from __future__ import annotations

from typing import Any

from search_space.errors import UserError
from search_space.strategies import CellClassifier, StrategyInfo, get_strategy, strategy_names


def _strategy_of(name: Any) -> StrategyInfo:
    if name not in strategy_names():
        raise UserError(f"unknown strategy {name!r}; valid: {', '.join(strategy_names()) or '(none registered)'}")
    return get_strategy(name)


def default_config(strategy: str) -> dict[str, Any]:
    """A mid-range, valid config for ``strategy``: its registered defaults, plus the k-rule
    defaults for strategies with a k (so the config says how k moves during training)."""
    info = _strategy_of(strategy)
    config = {"strategy": info.name, **info.defaults}
    if info.uses_k_rule:
        from search_space.k_rules import k_rule_defaults

        config.update(k_rule_defaults())
    return config


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the strategy's defaults filled in and declared values checked (ints coerced).

    Raises ``UserError`` naming the key, the value and what is allowed.
    """
    if "strategy" not in config:
        raise UserError(f"config has no 'strategy' key; valid strategies: {', '.join(strategy_names())}")
    info = _strategy_of(config["strategy"])
    full = {**info.defaults, **config}
    for key, spec in info.params.items():
        problem = spec.check(full[key])
        if problem:
            raise UserError(f"strategy {info.name!r}: config key {key!r}={full[key]!r} must be {problem}")
        full[key] = spec.cast(full[key])  # JSON may hand back 64.0 for an int
    return full


def build_model(config: dict[str, Any], in_channels: int, num_classes: int, image_size: int) -> CellClassifier:
    """Build the network ``config`` describes for (in_channels, image_size x image_size) images.

    Raises ``UserError`` for an unknown strategy (listing the valid ones), an out-of-range value, or
    values the strategy rejects together (e.g. ``num_heads`` not dividing ``embed_dim``).
    """
    full = complete_config(config)
    try:
        return get_strategy(full["strategy"]).create(
            full, in_channels=in_channels, num_classes=num_classes, image_size=image_size
        )
    except ValueError as err:
        raise UserError(f"strategy {full['strategy']!r}: {err}") from err
