"""What every layer needs to know about an objective, declared once: direction, unit, label, scale,
whether a constraint may bound it, and the figures its measure reports beside its value.

Torch-free, so the space validator, the report and the driver read it without loading a model. The
measure functions live with the models (``objectives.registry``); ``objectives.register_objective``
declares a new objective's facts here and its measure there in one call, and from then on the space
file accepts it (and ``constraints.max_<name>`` when it is a bounded cost, ``constraints.min_<name>``
when it is a bounded figure to maximise), trials.csv carries it (and its extras), and the report plots it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cellsparse.pareto import DIRECTIONS
from cellsparse.registry import Registry

STYLES = ("fraction", "count", "number")
#: The constraints key of a bounded objective by its direction: a ceiling on a cost, a floor on a gain.
CONSTRAINT_PREFIXES = {"minimize": "max_", "maximize": "min_"}


@dataclass(frozen=True)
class ObjectiveInfo:
    """The facts about one objective that are not how to measure it."""

    name: str
    direction: str  # the default a space may override: "maximize" or "minimize"
    unit: str  # for tables, e.g. "FLOPs", "ms"
    label: str  # for plot axes, e.g. "FLOPs per image"
    log_scale: bool = False  # spans decades: plotted, and its knee looked for, on a log scale
    bounded: bool = False  # known before training: ``constraints.max_<name>`` (min_ to maximise) may bound it
    style: str = "number"  # how terminal lines print it: fraction (0.9312), count (4.96M), number (3.21)
    ideal: float | None = None  # the best value it can take (accuracy 1, a cost 0): normalises hypervolume
    extras: tuple[str, ...] = ()  # figures its measure reports beside the value (throughput_spread): trials.csv columns

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"objective name must be an identifier, but got {self.name!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"objective {self.name!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.style not in STYLES:
            raise ValueError(f"objective {self.name!r}: style must be one of {STYLES}, got {self.style!r}")
        if not all(isinstance(e, str) and e.isidentifier() and e != self.name for e in self.extras):
            raise ValueError(f"objective {self.name!r}: extras must be identifiers other than its name, "
                             f"got {self.extras!r}")

    @property
    def constraint_key(self) -> str | None:
        """The constraints key that bounds this objective (``max_<name>`` for a cost, ``min_<name>`` for
        a figure to maximise), or None when none may."""
        return CONSTRAINT_PREFIXES[self.direction] + self.name if self.bounded else None

    def excess(self, value: float, limit: float) -> float:
        """How far ``value`` is past the constraint's ``limit``: <= 0 is feasible (Optuna's convention)."""
        return value - limit if self.direction == "minimize" else limit - value

    def format(self, value: Any) -> str:
        """``value`` for a terminal line; '-' when missing or not finite."""
        return format_figure(value, self.style)


def format_figure(value: Any, style: str = "number") -> str:
    """A figure for a terminal line in one of the STYLES; '-' when missing or not finite."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-" if not isinstance(value, str) else value
    if style == "count":
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.3g}{unit}"
        return f"{value:.0f}"
    if style == "fraction":
        return f"{float(value):.4f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_DECLARED: Registry[ObjectiveInfo] = Registry("objective", added="declared")


def declare_objective(info: ObjectiveInfo) -> ObjectiveInfo:
    """Add ``info``; a name declared twice is an error."""
    return _DECLARED.add(info.name, info)


def declared_objectives() -> list[str]:
    """Every declared objective, in declaration order."""
    return _DECLARED.names()


def objective_info(name: str) -> ObjectiveInfo:
    """The facts about ``name``. A name not declared in this process (a plugin's objective read back
    from a run directory without the plugin) gets neutral ones: its name as label, a linear scale."""
    return _DECLARED.find(name) or ObjectiveInfo(name if name.isidentifier() else "unknown", "maximize", "", name)


def ideal_point(names: Sequence[str]) -> list[float] | None:
    """The best value of each objective (``ObjectiveInfo.ideal``), or None when one has none declared:
    the corner of the box ``cellsparse.pareto.normalized_hypervolume`` divides by."""
    ideals = [objective_info(name).ideal for name in names]
    return None if any(v is None for v in ideals) else [float(v) for v in ideals]


def constraint_keys() -> dict[str, str]:
    """Every constraints key a space may set, with the objective it bounds: {'max_flops': 'flops', ...}."""
    return {info.constraint_key: info.name for info in _DECLARED.values() if info.constraint_key}


def objective_extras(names: Sequence[str]) -> list[str]:
    """The extra figures the objectives ``names`` report beside their values, in order (trials.csv columns)."""
    return [extra for name in names for extra in objective_info(name).extras]


for _info in (
    ObjectiveInfo("accuracy", "maximize", "fraction", "validation accuracy", style="fraction", ideal=1.0),
    ObjectiveInfo("flops", "minimize", "FLOPs", "FLOPs per image", log_scale=True, bounded=True, style="count", ideal=0.0),
    ObjectiveInfo("params", "minimize", "parameters", "parameters", log_scale=True, bounded=True, style="count",
                  ideal=0.0),
    ObjectiveInfo("latency_ms", "minimize", "ms", "latency (ms per image)", log_scale=True, bounded=True, ideal=0.0),
    ObjectiveInfo("peak_mem_mb", "minimize", "MiB", "peak memory (MiB)", log_scale=True, bounded=True, ideal=0.0),
    ObjectiveInfo("throughput", "maximize", "images/s", "throughput (images/s)", log_scale=True, bounded=True,
                  extras=("throughput_spread", "throughput_raw")),
):
    declare_objective(_info)
