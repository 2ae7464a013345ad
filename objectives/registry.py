"""The objectives a trial can be measured by: each one's measure function, registered by name.

An :class:`Objective` is its facts (direction, unit, label, scale, whether a constraint may bound
it: :class:`cellsparse.objective_info.ObjectiveInfo`, declared torch-free so the space validator and
the report can read them) plus a measure function ``measure(model, images, labels) -> float`` (or a
mapping of the value under its name and its declared ``extras``, e.g. ``throughput_spread``). Cost
objectives read only the images (a representative batch); ``accuracy`` needs the labels of those
images (the trainer passes its validation set). ``register_objective`` is the one call that adds
an objective everywhere: the space file, the constraints, trials.csv, the report and the model card.
A space must give each objective the direction declared here (minimising accuracy would search for
the worst models, so a contrary direction is refused when the space file loads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cellsparse.errors import UserError
from cellsparse.objective_info import (
    ObjectiveInfo,
    declare_objective,
    declared_objectives,
    objective_info,
)
from cellsparse.registry import Registry
from objectives._inference import inference
from objectives.flops import count_flops
from objectives.resources import count_params, measure_latency_ms, measure_peak_memory_mb
from objectives.throughput import throughput_figures

Measure = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None"], "float | Mapping[str, float]"]


class ObjectiveError(UserError, ValueError):
    """An objective name is unknown, or an objective cannot be measured from what it was given."""


@dataclass(frozen=True)
class Objective:
    """One thing a trial is measured by. The first five fields are required, so a half-defined one
    cannot exist; the keyword options say how it is shown and whether a constraint may bound it."""

    name: str
    direction: str  # "maximize" or "minimize"
    unit: str  # for tables, e.g. "FLOPs", "ms"
    label: str  # for plot axes, e.g. "FLOPs / image"
    measure: Measure
    log_scale: bool = False
    bounded: bool = False  # measurable on an untrained model, so constraints.max_<name> (min_<name>) may bound it
    style: str = "number"
    extras: tuple[str, ...] = ()  # figures the measure returns beside the value (see ``measure_objective``)

    def __post_init__(self) -> None:
        self.info  # noqa: B018 (validates name, direction and style)
        if not callable(self.measure):
            raise TypeError(f"objective {self.name!r}: measure must be callable, got {self.measure!r}")

    @property
    def info(self) -> ObjectiveInfo:
        return ObjectiveInfo(self.name, self.direction, self.unit, self.label, self.log_scale, self.bounded, self.style,
                             extras=self.extras)


_REGISTRY: Registry[Objective] = Registry("objective", unknown=ObjectiveError)


def register_objective(objective: Objective) -> Objective:
    """Add ``objective`` (its facts to the declared objectives, its measure here); a name registered
    twice is an error."""
    if objective.name in declared_objectives():
        raise ValueError(f"objective {objective.name!r} is registered twice")
    declare_objective(objective.info)
    return _REGISTRY.add(objective.name, objective)


def _attach(name: str, measure: Measure) -> None:
    """Give a built-in objective, declared in ``cellsparse.objective_info``, its measure function."""
    info = objective_info(name)
    _REGISTRY.add(name, Objective(info.name, info.direction, info.unit, info.label, measure,
                                log_scale=info.log_scale, bounded=info.bounded, style=info.style, extras=info.extras))


def objective_names() -> list[str]:
    """Names of every registered objective, in registration order."""
    return _REGISTRY.names()


def get_objective(name: str) -> Objective:
    """The objective called ``name``; an unknown name lists the valid ones."""
    return _REGISTRY.get(name)


def measure_objective(name: str, model: nn.Module, images: torch.Tensor,
                      labels: torch.Tensor | None = None) -> dict[str, float]:
    """``name``'s figures on ``model``: ``{name: value}``, and its ``extras`` where its measure reports them.

    What a trial records and what a budget check compares: one call for objectives that return a
    float and those that return their value with figures beside it."""
    objective = get_objective(name)
    result = objective.measure(model, images, labels)
    if not isinstance(result, Mapping):
        return {name: float(result)}
    unknown = sorted(set(result) - {name, *objective.extras})
    if name not in result or unknown:
        raise ObjectiveError(f"objective {name!r}: its measure returned {sorted(result)}; expected {name!r} and "
                             f"only its declared extras {list(objective.extras)}")
    return {key: float(value) for key, value in result.items()}


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


for _name, _measure in (
    ("accuracy", measure_accuracy),
    ("flops", _flops),
    ("params", _params),
    ("latency_ms", _latency),
    ("peak_mem_mb", _peak_memory),
    ("throughput", throughput_figures),
):
    _attach(_name, _measure)
