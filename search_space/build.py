"""Config dict -> model: the one place a strategy name is resolved to a network.

A config is flat and JSON-serialisable and always holds ``strategy``. Keys the strategy declares
and the config leaves out take the registered defaults; keys it does not declare (training keys
such as ``lr``, k-rule keys such as ``k_rule``) pass through untouched, so a model may read the
k-rule keys it needs. The same config (and the same torch seed) rebuilds the same network, which is
what checkpoints, reports and export rely on.

Input resolution (``input_size``, declared in ``search_space.resolution``): when a config sets it
below the data's ``image_size``, the strategy's network is built for ``input_size`` and wrapped in
:class:`ResizedInput`, which area-downscales each frame before it. The resize is part of the model:
exported files take frames at the data's size and ``runner.predict`` needs nothing new. How it
combines with each strategy's own notion of scale: every size-dependent key counts in the resized
frame (``sparse_topk``'s ``k_fraction`` is a fraction of input_size**2 pixels; ``span_pyramid``'s
``patch_size`` and ``dense_vit``'s ``patch_size`` are in resized pixels, so the patch grid is
ceil(input_size / patch_size) a side; ``dense_cnn``'s stages halve the resized frame).
``tnet_traversal`` crops its glimpses from the resized frame and resizes each to ``base_resolution``,
so its FLOPs do not change with ``input_size``: a smaller frame only lowers the detail its crops can
resolve (below ``base_resolution`` the whole-image view is upsampled). A config without
``input_size``, or with it null or equal to the data's size, gets no wrapper: exactly the network,
state_dict keys and numbers it gave before the key existed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cellsparse.errors import UserError
from search_space.k_rules import k_rule_defaults
from search_space.resolution import INPUT_PARAMS, INPUT_SIZE_KEY, input_size_problem, resolution_of
from search_space.strategies import CellClassifier, StrategyInfo, get_strategy, strategy_names
from search_space.strategies.blocks import area_resize_flops


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
        config.update(k_rule_defaults())
    return config


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the strategy's defaults filled in and declared values checked (ints coerced).

    Keys every strategy takes (``input_size``) are checked and cast when present, and left out when
    absent. Raises ``UserError`` naming the key, the value and what is allowed.
    """
    if "strategy" not in config:
        raise UserError(f"config has no 'strategy' key; valid strategies: {', '.join(strategy_names())}")
    info = _strategy_of(config["strategy"])
    full = {**info.defaults, **config}
    for key, spec in [*info.params.items(), *((k, s) for k, s in INPUT_PARAMS.items() if k in full)]:
        problem = spec.check(full[key])
        if problem:
            raise UserError(f"strategy {info.name!r}: config key {key!r}={full[key]!r} must be {problem}")
        full[key] = spec.cast(full[key])  # JSON may hand back 64.0 for an int
    return full


class ResizedInput(CellClassifier):
    """A strategy's network behind an area downscale: (B, C, H, W) frames -> (B, C, size, size) -> inner.

    Area interpolation averages each output pixel's footprint (``F.interpolate(mode="area")``, an
    adaptive average pool): no aliasing, and it exports to ONNX and ``torch.export`` for any pair of
    sizes. The FLOPs objective counts it (1 FLOP per input element of each output's window, the
    resampling convention of ``objectives.flops``) on top of what the inner network costs at
    ``size``. Everything else is the inner model's: k, its bounds, the auxiliary loss, the
    hand-formula FLOPs (on the resized frames).

    ``used_map`` is the inner map brought back to the frame (nearest upsampling) and multiplied by
    (size / H) * (size / W), the share of the frame's pixels each resized pixel resolves: the
    convention ``tnet_traversal`` uses for its downscaled views, so a dense CNN that sees a 32 px
    copy of a 64 px frame reports a quarter of the image used, not all of it.
    """

    def __init__(self, inner: CellClassifier, *, size: int) -> None:
        super().__init__()
        self.inner = inner
        self.size = int(size)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, size, size) by area averaging."""
        return F.interpolate(images, size=(self.size, self.size), mode="area")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(self.resize(images))  # (B, num_classes)

    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        H, W = images.shape[-2:]
        inner = self.inner.used_map(self.resize(images))  # (B, size, size)
        full = F.interpolate(inner[:, None].to(images.dtype), size=(H, W), mode="nearest")[:, 0]  # (B, H, W)
        return full * (self.size / H) * (self.size / W)

    def auxiliary_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.inner.auxiliary_loss(logits, targets)

    def analytic_flops(self, images: torch.Tensor) -> float | None:
        inner = self.inner.analytic_flops(self.resize(images))
        C, H, W = images.shape[1:]
        return None if inner is None else inner + area_resize_flops(C, H, W, self.size, self.size)

    def k_bounds(self) -> tuple[int, int] | None:
        return self.inner.k_bounds()

    @property
    def k(self) -> float | None:
        return self.inner.k

    def set_k(self, k: int) -> None:
        self.inner.set_k(k)


def build_model(config: dict[str, Any], in_channels: int, num_classes: int, image_size: int) -> CellClassifier:
    """Build the network ``config`` describes for (in_channels, image_size x image_size) images.

    With ``input_size`` below ``image_size`` the network is built for ``input_size`` and wrapped in
    :class:`ResizedInput` (see the module docstring); it still takes image_size frames.

    Raises ``UserError`` for an unknown strategy (listing the valid ones), an out-of-range value
    (``input_size`` above ``image_size`` included), or values the strategy rejects together (e.g.
    ``num_heads`` not dividing ``embed_dim``).
    """
    full = complete_config(config)
    problem = input_size_problem(full.get(INPUT_SIZE_KEY), image_size)
    if problem:
        raise UserError(f"strategy {full['strategy']!r}: config key {INPUT_SIZE_KEY!r}={full[INPUT_SIZE_KEY]!r} "
                        f"must be {problem}")
    size = resolution_of(full, image_size)
    try:
        model = get_strategy(full["strategy"]).create(
            full, in_channels=in_channels, num_classes=num_classes, image_size=size
        )
    except ValueError as err:
        raise UserError(f"strategy {full['strategy']!r}: {err}") from err
    return model if size == image_size else ResizedInput(model, size=size)
