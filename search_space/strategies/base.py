"""The interface every strategy model implements, and the registry that builds them by name.

A strategy is one file in this package that defines a ``CellClassifier`` subclass and registers the
class with :func:`register_strategy`, declaring each tunable keyword of its constructor once, as a
``ParamSpec`` carrying its range, its default and its meaning. The YAML spec validates a space
against these declarations and ``build_model`` hands the validated, typed values straight to the
constructor, so a parameter name lives in exactly one place: the strategy that reads it.

Lifecycle of a model inside a trial::

    model = build_model(config, in_channels, num_classes, image_size)
    logits = model(images)                                   # (B, num_classes)
    loss = ce(logits, y) + model.auxiliary_loss(logits, y)   # uses state cached by that forward
    model.set_k(rule.update(step, loss))                     # k-adaptation, after each step
    used = model.used_map(images)                            # (B, H, W) in [0, 1], for reports

The k a model runs at is part of its ``state_dict`` (as module extra state), so saved weights
rebuild the network at the k it was trained to.

Input resolution: a strategy is always built for the frames it will see. When a config sets
``input_size`` (the key every strategy takes, ``search_space.resolution``) below the data's size,
``build_model`` passes ``image_size=input_size`` to the constructor and wraps the model in
``search_space.build.ResizedInput``, which area-downscales each frame first and hands the k
interface, ``auxiliary_loss`` and ``analytic_flops`` through. So every size a strategy reads (k as
a fraction of H*W pixels, a patch grid, crops) is in the resized frame, and a strategy needs no
code of its own for it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cellsparse.registry import Registry
from cellsparse.strategy_info import declare_strategy, is_sparse  # is_sparse re-exported
from search_space.k_rules import rule_keys
from search_space.params import ParamSpec  # re-exported: strategies declare their keys with it


def transformer_params(
    *, embed_dim: int, num_heads: int, depth: int, mlp_ratio: float, depth_doc: str = "transformer blocks"
) -> dict[str, ParamSpec]:
    """The shared transformer keys, declared once so every strategy accepts the same ranges; the
    arguments are this strategy's defaults."""
    return {
        "embed_dim": ParamSpec("int", low=8, high=512, doc="token width D", default=embed_dim),
        "num_heads": ParamSpec("int", low=1, high=16, doc="attention heads; must divide embed_dim", default=num_heads),
        "depth": ParamSpec("int", low=1, high=12, doc=depth_doc, default=depth),
        "mlp_ratio": ParamSpec("float", low=1.0, high=8.0, doc="MLP hidden width / embed_dim", default=mlp_ratio),
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


K_STATE_KEY = "k_value"  # the state_dict entry holding a model's k


class CellClassifier(nn.Module, ABC):
    """A cell classifier, dense or looking at only part of each image.

    Subclasses implement ``forward`` and ``used_map``; sparse ones also ``k_bounds``/``set_k`` and
    ``auxiliary_loss``. Inference (eval mode) must be deterministic and exportable with
    ``torch.export`` and ONNX: no Python loops over data-dependent shapes.
    """

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 (torch's hook signature)
        # k is a Python int (shapes depend on it, so forward must not read it from a tensor at trace
        # time), saved beside the weights as a 0-d tensor so a state_dict rebuilds the model at its k.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        k = getattr(self, "_k", None)
        if k is not None and self.k_bounds() is not None:
            destination[prefix + K_STATE_KEY] = torch.tensor(int(k))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # noqa: ANN001
        # Weights saved before k was part of the state dict load as they are, at the built k.
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        key = prefix + K_STATE_KEY
        if key in unexpected_keys and self.k_bounds() is not None:
            unexpected_keys.remove(key)
        if key in state_dict and self.k_bounds() is not None:
            self.set_k(int(state_dict[key]))

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
        """Set the k used from the next forward on (the trial calls this after every training step, with
        the k its k-adaptation rule chose)."""
        raise TypeError(f"{type(self).__name__} has no k to set")


class CountedKModel(CellClassifier):
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


ModelClass = type[CellClassifier]

# Keyword arguments a constructor may take besides its declared keys: the data's shape, and for
# strategies with a k rule, the rule and its keys (a per-image rule changes what the model runs).
CONTEXT_ARGS = ("in_channels", "num_classes", "image_size", "k_rule", "k_rule_config")


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: its model class, the keys it accepts (with defaults), and its kind."""

    name: str
    model: ModelClass
    params: dict[str, ParamSpec]
    sparse: bool = True
    doc: str = ""
    uses_k_rule: bool = field(default=True)

    @property
    def defaults(self) -> dict[str, Any]:
        """A mid-range value for every declared key (what a config that leaves a key out takes)."""
        return {key: spec.default for key, spec in self.params.items()}

    def create(self, config: dict[str, Any], *, in_channels: int, num_classes: int, image_size: int) -> CellClassifier:
        """The model for a config holding every declared key (values unchecked: ``build_model``
        checks them), plus the context arguments (``CONTEXT_ARGS``) its constructor takes."""
        context = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "image_size": image_size,
            "k_rule": str(config.get("k_rule", "fixed")),
            "k_rule_config": {key: config[key] for key in rule_keys(str(config.get("k_rule", "fixed"))) if key in config},
        }
        accepted = set(inspect.signature(self.model.__init__).parameters)
        values = {key: config[key] for key in self.params}
        return self.model(**values, **{key: value for key, value in context.items() if key in accepted})


_REGISTRY: Registry[StrategyInfo] = Registry("strategy")


def register_strategy(
    name: str,
    *,
    params: dict[str, ParamSpec],
    sparse: bool | None = None,
    uses_k_rule: bool = True,
    doc: str = "",
) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: register a model class under ``name``.

    Every key in ``params`` must be a keyword of the class's constructor and carry a valid default;
    ``build_model`` calls ``cls(**values, in_channels=..., num_classes=..., ...)`` with the values
    checked and cast, passing only the context arguments (``CONTEXT_ARGS``) the constructor takes.

    Whether it is sparse: a built-in strategy's kind is declared torch-free in
    ``cellsparse.strategy_info`` (so reports read it without loading models); any other strategy
    declares its own with ``sparse`` (default True), which a built-in may only repeat.
    """

    for key, spec in params.items():
        problem = spec.check(spec.default)
        if problem:
            raise ValueError(f"strategy {name!r}: default {key}={spec.default!r} is not {problem}")
    declared = is_sparse(name)
    if declared is not None and sparse is not None and sparse != declared:
        raise ValueError(f"strategy {name!r} is declared {'sparse' if declared else 'dense'} in "
                         f"cellsparse.strategy_info, but registered with sparse={sparse}")

    def decorate(model: ModelClass) -> ModelClass:
        if name in _REGISTRY:  # before anything is declared
            raise ValueError(f"strategy {name!r} is registered twice")
        accepted = set(inspect.signature(model.__init__).parameters)
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise ValueError(f"strategy {name!r}: {model.__name__}() takes no keyword {unknown}")
        if is_sparse(name) is None:
            declare_strategy(name, sparse=True if sparse is None else sparse)
        _REGISTRY.add(name, StrategyInfo(name, model, dict(params), bool(is_sparse(name)), doc, uses_k_rule))
        return model

    return decorate


def strategy_names() -> list[str]:
    """Names of every registered strategy, in registration order."""
    return _REGISTRY.names()


def get_strategy(name: str) -> StrategyInfo:
    """The registered strategy ``name``; an unknown name lists the valid ones."""
    return _REGISTRY.get(name)

