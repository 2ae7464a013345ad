"""Input resolution: the one searched key every strategy takes, declared once.

``input_size`` is the side in pixels a frame is shrunk to before the network sees it; null (or a
config without the key) means the data's ``image_size``. Resolution is the third axis of compound
scaling (EfficientNet) beside width and depth, and the cheapest way to look at less of an image is
to look at a smaller copy of it: on 64 px white cells a CNN that sees a 28 px copy does about a
fifth of the work.

Why a side in pixels and not a scale factor: the network is built for an integer size, so a scale
would be rounded and two scales could name the same network; a side reads the way people talk
about cell images (28 px, 64 px) and is what the report and the model card show.

The resize itself (area interpolation, inside the model) lives in ``search_space.build``; this
module is torch-free so that reports can resolve a trial's resolution without importing torch.
Like the k-rule keys (``search_space.k_rules.K_RULE_PARAMS``), ``INPUT_PARAMS`` is added to every
strategy's accepted keys by the spec, sampled like any other key, and left out of configs that do
not set it (so configs written before it existed rebuild the same network).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cellsparse.strategy_info import INPUT_SIZE_KEY  # re-exported: declared in the base, where trials.csv names it
from search_space.params import ParamSpec

MIN_INPUT_SIZE = 8  # below this the stride-2 stages of the small models run out of pixels
MAX_INPUT_SIZE = 512  # the largest data.image_size a space accepts


@dataclass(frozen=True)
class OptionalParamSpec(ParamSpec):
    """A ``ParamSpec`` that also accepts null (YAML ``null``, JSON ``null``, Python ``None``)."""

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        problem = super().check(value)
        return None if problem is None else f"{problem}, or null"

    def cast(self, value: Any) -> Any:
        return None if value is None else super().cast(value)


#: Keys every strategy accepts besides its own (in ``space.shared`` or a strategy's block).
INPUT_PARAMS: dict[str, ParamSpec] = {
    INPUT_SIZE_KEY: OptionalParamSpec(
        "int",
        low=MIN_INPUT_SIZE,
        high=MAX_INPUT_SIZE,
        default=None,
        doc="side in pixels the frame is area-downscaled to before the model (null: the data's image_size; "
        "at most image_size)",
    ),
}


def input_size_problem(value: Any, image_size: int) -> str | None:
    """What is wrong with ``input_size=value`` for frames of side ``image_size``, or None."""
    problem = INPUT_PARAMS[INPUT_SIZE_KEY].check(value)
    if problem:
        return problem
    if value is not None and int(value) > image_size:
        return f"at most the data's image_size {image_size} (the frame is only ever shrunk), or null"
    return None


def resolution_of(config: Mapping[str, Any], image_size: int) -> int:
    """The side in pixels the model built from ``config`` sees, for frames of side ``image_size``."""
    value = config.get(INPUT_SIZE_KEY)
    return int(image_size) if value is None else int(value)
