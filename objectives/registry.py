"""The objectives a trial can be measured by, registered by name.

An :class:`Objective` is plain data: a name, the direction a search should push it, a unit and a
label for reports, and a measure function ``measure(model, images, labels) -> float``. Cost
objectives read only the images (a representative batch); ``accuracy`` needs the labels of those
images (the trainer passes its validation set). A search's ``objectives:`` list names entries of
this registry; a space must give each the direction registered here (minimising accuracy would
search for the worst models, so a contrary direction is refused when the space file loads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from objectives._inference import inference
from objectives.flops import count_flops
from objectives.resources import count_params, measure_latency_ms, measure_peak_memory_mb
from search_space.errors import UserError

DIRECTIONS = ("maximize", "minimize")

Measure = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None"], float]


class ObjectiveError(UserError, ValueError):
    """An objective name is unknown, or an objective cannot be measured from what it was given."""


@dataclass(frozen=True)
class Objective:
    """One thing a trial is measured by. Every field is required, so a half-defined one cannot exist."""

    name: str
    direction: str  # "maximize" or "minimize"
    unit: str  # for tables, e.g. "FLOPs", "ms"
    label: str  # for plot axes, e.g. "FLOPs / image"
    measure: Measure

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"objective name must be an identifier, but got {self.name!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"objective {self.name!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not callable(self.measure):
            raise TypeError(f"objective {self.name!r}: measure must be callable, got {self.measure!r}")


_REGISTRY: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add ``objective`` to the registry; a name registered twice is an error."""
    if objective.name in _REGISTRY:
        raise ValueError(f"objective {objective.name!r} is registered twice")
    _REGISTRY[objective.name] = objective
    return objective


def objective_names() -> list[str]:
    """Names of every registered objective, in registration order."""
    return list(_REGISTRY)


def get_objective(name: str) -> Objective:
    """The objective called ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ObjectiveError(f"unknown objective {name!r}; valid: {', '.join(_REGISTRY)}") from None


def measure_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, *, chunk: int = 256) -> float:
    """Fraction of ``images`` whose arg-max logit is the label, in eval mode, ``chunk`` images at a time."""
    if labels is None:
        raise ObjectiveError("objective 'accuracy' needs the labels of the images it is measured on")
    if len(labels) != len(images) or len(images) == 0:
        raise ObjectiveError(f"accuracy needs one label per image, but got {len(labels)} labels for {len(images)}")
    correct = 0
    with inference(model):
        for start in range(0, len(images), chunk):
            logits = model(images[start : start + chunk])
            correct += int((logits.argmax(dim=-1) == labels[start : start + chunk].to(logits.device)).sum())
    return correct / len(images)


def _flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> float:
    return count_flops(model, images)


def _params(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> float:
    return float(count_params(model))


def _latency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> float:
    return measure_latency_ms(model, images)


def _peak_memory(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> float:
    return measure_peak_memory_mb(model, images)


for _objective in (
    Objective("accuracy", "maximize", "fraction", "accuracy", measure_accuracy),
    Objective("flops", "minimize", "FLOPs", "FLOPs / image", _flops),
    Objective("params", "minimize", "parameters", "parameters", _params),
    Objective("latency_ms", "minimize", "ms", "latency (ms / image)", _latency),
    Objective("peak_mem_mb", "minimize", "MiB", "peak memory (MiB)", _peak_memory),
):
    register_objective(_objective)
