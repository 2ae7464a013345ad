"""The interface every strategy model implements, and the registry that builds them by name.

A strategy is one file in this package that defines a ``SparseModel`` subclass and registers it
with :func:`register_strategy`, declaring its tunable parameters (``ParamSpec``) and a mid-range
default for each. The YAML spec validates a space against these declarations, so a parameter name
lives in exactly one place: the strategy that reads it.

Lifecycle of a model inside a trial::

    model = build_model(config, in_channels, num_classes, image_size)
    logits = model(images)                                   # (B, num_classes)
    loss = ce(logits, y) + model.auxiliary_loss(logits, y)   # uses state cached by that forward
    rule.step(...); model.set_k(rule.k)                      # k-adaptation, once per epoch
    used = model.used_map(images)                            # (B, H, W) in [0, 1], for reports
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_space.params import ParamSpec  # re-exported: strategies declare their keys with it


def transformer_params(*, depth_doc: str = "transformer blocks") -> dict[str, ParamSpec]:
    """The shared transformer keys, declared once so every strategy accepts the same ranges."""
    return {
        "embed_dim": ParamSpec("int", low=8, high=512, doc="token width D"),
        "num_heads": ParamSpec("int", low=1, high=16, doc="attention heads; must divide embed_dim"),
        "depth": ParamSpec("int", low=1, high=12, doc=depth_doc),
        "mlp_ratio": ParamSpec("float", low=1.0, high=8.0, doc="MLP hidden width / embed_dim"),
    }


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run a block in eval mode and no_grad, then restore the module's own mode (for reports)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class SparseModel(nn.Module, ABC):
    """A cell classifier that may look at only part of each image.

    Subclasses implement ``forward`` and ``used_map``; sparse ones also ``k_bounds``/``set_k`` and
    ``auxiliary_loss``. Inference (eval mode) must be deterministic and exportable with
    ``torch.export`` and ONNX: no Python loops over data-dependent shapes.
    """

    @abstractmethod
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""

    @abstractmethod
    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) map in [0, 1] of the pixels or regions the model used for each image (eval)."""

    def auxiliary_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Extra training loss for the selector, from state cached by the last training forward."""
        return logits.new_zeros(())

    def analytic_flops(self, images: torch.Tensor) -> float | None:
        """Hand-formula FLOPs per image (mean over the batch) at the current k, or None.

        Models whose k varies per image (learned rules) must implement it: a counter sees the
        padded batch, while the objective counts only the query-key pairs an image really needs.
        Tests check it against FlopCounterMode wherever k is fixed.
        """
        return None

    # k: the number of pixels / patches / regions kept. Dense models have none.
    def k_bounds(self) -> tuple[int, int] | None:
        """(lowest, highest) k this model accepts, or None when it has no k."""
        return None

    @property
    def k(self) -> float | None:
        """Current k (mean over the last batch for per-image rules), or None for dense models."""
        return None

    def set_k(self, k: int) -> None:
        """Set the k used from the next forward on (a k-adaptation rule calls this each epoch)."""
        raise TypeError(f"{type(self).__name__} has no k to set")


class CountedKModel(SparseModel):
    """A model whose k is a count of kept elements (pixels, patches), set by epoch rules or, for
    per-image rules, reported as the mean kept per image on the last batch.

    Subclasses set ``self._k``, ``self.per_image`` and ``self._last_counts`` and define ``k_bounds``.
    """

    _k: int
    per_image: bool = False
    _last_counts: torch.Tensor | None = None

    @property
    def k(self) -> float:
        """The set k, or for per-image rules the mean kept per image on the last batch."""
        if self.per_image and self._last_counts is not None:
            return float(self._last_counts.float().mean())
        return float(self._k)

    def set_k(self, k: int) -> None:
        low, high = self.k_bounds()
        if not low <= int(k) <= high:
            raise ValueError(f"k must lie in [{low}, {high}] for this {type(self).__name__}, got {k}")
        self._k = int(k)


ModelFactory = Callable[..., SparseModel]


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: how to build it, what it accepts, and a mid-range default config."""

    name: str
    factory: ModelFactory
    params: dict[str, ParamSpec]
    defaults: dict[str, Any]
    sparse: bool = True
    doc: str = ""
    uses_k_rule: bool = field(default=True)


_REGISTRY: dict[str, StrategyInfo] = {}


def register_strategy(
    name: str,
    *,
    params: dict[str, ParamSpec],
    defaults: dict[str, Any],
    sparse: bool = True,
    uses_k_rule: bool = True,
    doc: str = "",
) -> Callable[[ModelFactory], ModelFactory]:
    """Class or function decorator: register a model factory under ``name``.

    The factory is called as ``factory(config=..., in_channels=..., num_classes=...,
    image_size=...)`` with ``config`` already completed from ``defaults``.
    """

    missing = sorted(set(params) ^ set(defaults))
    if missing:
        raise ValueError(f"strategy {name!r}: params and defaults must name the same keys, differ on {missing}")
    for key, spec in params.items():
        problem = spec.check(defaults[key])
        if problem:
            raise ValueError(f"strategy {name!r}: default {key}={defaults[key]!r} is not {problem}")

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is registered twice")
        _REGISTRY[name] = StrategyInfo(name, factory, dict(params), dict(defaults), sparse, doc, uses_k_rule)
        return factory

    return decorate


def strategy_names() -> list[str]:
    """Names of every registered strategy, in registration order."""
    return list(_REGISTRY)


def get_strategy(name: str) -> StrategyInfo:
    """The registered strategy ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; valid: {', '.join(_REGISTRY) or '(none registered)'}") from None


def params_for(names: Sequence[str]) -> dict[str, ParamSpec]:
    """Union of the declared parameters of the given strategies (first declaration wins)."""
    merged: dict[str, ParamSpec] = {}
    for name in names:
        for key, spec in get_strategy(name).params.items():
            merged.setdefault(key, spec)
    return merged
