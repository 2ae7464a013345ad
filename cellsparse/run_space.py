"""A finished run's ``space.yaml``, read typed: what the report, the export and the Pareto code need
of it (objectives and their directions, constraints, the hypervolume reference point, the data).

Torch-free (PyYAML only), so the report reads a run without loading a model. The search writes
``space.yaml`` resolved and complete; this reader still checks every field it hands out, because
a run directory can be copied, edited or cut short, and a bad field must be one line naming the
file and the key, not a KeyError three modules later. The full space language (strategies, ranges)
stays with ``search_space.spec``, which export uses to rebuild a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellsparse.errors import UserError
from cellsparse.objective_info import objective_info
from cellsparse.pareto import DIRECTIONS


@dataclass(frozen=True)
class RunSpace:
    """The resolved space of one run. ``raw`` is the file's mapping as read (for display)."""

    source: Path
    raw: Mapping[str, Any]
    objectives: dict[str, str]  # name -> "maximize" | "minimize", in the file's order
    constraints: dict[str, float] = field(default_factory=dict)  # e.g. {"max_flops": 5e6}
    declared_reference: dict[str, float] = field(default_factory=dict)  # search.reference_point
    data: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        name = self.raw.get("name")
        return str(name) if name is not None else None

    @property
    def seed(self) -> Any:
        return self.raw.get("seed")

    @property
    def objective_names(self) -> list[str]:
        return list(self.objectives)

    @property
    def image_size(self) -> int | None:
        """The frame side the run's data were resized to (None where the file does not say)."""
        size = self.data.get("image_size")
        return size if isinstance(size, int) and not isinstance(size, bool) else None

    @property
    def strategies(self) -> list[str]:
        """The strategies the run searched, in the file's order."""
        space = self.raw.get("space")
        strategy = space.get("strategy") if isinstance(space, Mapping) else None
        return [str(s) for s in strategy] if isinstance(strategy, (Mapping, list)) else []

    def limit(self, objective: str) -> float | None:
        """The constraint bounding ``objective`` (``constraints.max_<name>``), or None."""
        key = objective_info(objective).constraint_key
        return self.constraints.get(key) if key else None

    def reference_point(self) -> tuple[dict[str, float] | None, str]:
        """The hypervolume reference point declared for the run, and a sentence saying where it came from.

        Taken from ``search.reference_point``; objectives it leaves out are filled from the constraints
        (accuracy 0, a cost from its ``constraints.max_<name>``). Never derived from the run's own
        results, which would move the yardstick with the thing measured. (None, reason) when some
        objective has no declared bound."""
        point: dict[str, float] = {}
        derived: list[str] = []
        missing: list[str] = []
        for name, direction in self.objectives.items():
            key = objective_info(name).constraint_key
            if name in self.declared_reference:
                point[name] = self.declared_reference[name]
            elif name == "accuracy" and direction == "maximize":
                point[name] = 0.0
                derived.append("accuracy = 0")
            elif key and key in self.constraints:
                point[name] = self.constraints[key]
                derived.append(f"{name} = constraints.{key}")
            else:
                missing.append(name)
        if missing:
            return None, (f"no reference point for {', '.join(missing)}: search.reference_point in space.yaml does not "
                          "give one and no constraint bounds it; set search.reference_point to compute hypervolume")
        if not derived:
            return point, "from space.yaml search.reference_point"
        if len(derived) == len(self.objectives):
            return point, "derived from the constraints (" + ", ".join(derived) + "): search.reference_point is not set"
        return point, "from space.yaml search.reference_point, with " + ", ".join(derived) + " taken from the constraints"

    @classmethod
    def parse(cls, raw: Any, source: Path) -> RunSpace:
        """Check and type the fields of a space.yaml mapping; UserError naming ``source`` and the key."""
        if not isinstance(raw, Mapping):
            raise UserError(f"{source}: expected a YAML mapping (the resolved search space), got {type(raw).__name__}")
        objectives = raw.get("objectives")
        if not isinstance(objectives, Mapping) or not objectives:
            raise UserError(f"{source}: 'objectives' must map objective names to maximize/minimize")
        bad = {k: v for k, v in objectives.items() if v not in DIRECTIONS}
        if bad:
            raise UserError(f"{source}: objective directions must be 'maximize' or 'minimize', but got {bad}")
        search = _mapping(raw, "search", source)
        return cls(
            source=source,
            raw=raw,
            objectives={str(k): str(v) for k, v in objectives.items()},
            constraints=_numbers(_mapping(raw, "constraints", source), "constraints", source),
            declared_reference=_numbers(_mapping(search, "reference_point", source, "search."), "search.reference_point",
                                        source),
            data=_mapping(raw, "data", source),
            search=search,
        )


def _mapping(raw: Mapping[str, Any], key: str, source: Path, prefix: str = "") -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{source}: {prefix}{key} must be a mapping, got {type(value).__name__}")
    return value


def _numbers(values: Mapping[str, Any], where: str, source: Path) -> dict[str, float]:
    """The entries that are set (null means unset), each a finite number."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{source}: {where}.{key} must be a finite number, got {value!r}")
        out[str(key)] = float(value)
    return out


def read_run_space(path: Path) -> RunSpace:
    """Read and type ``path`` (a run's space.yaml); UserError naming it for a file that is not one."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: not valid YAML ({where}{problem})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the run's space file ({type(exc).__name__}: {exc})") from exc
    return RunSpace.parse(raw, Path(path))
