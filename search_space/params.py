"""One searchable value from a space file: a fixed value, a choice, or an int/float/log range.

Forms accepted in YAML::

    embed_dim: 64                 # fixed
    embed_dim: [32, 64, 96]       # categorical
    depth: {int: [1, 4]}          # integer range, inclusive
    depth: {int: [2, 8], step: 2} # integer range with a step
    k_fraction: {float: [0.05, 0.4]}
    lr: {log: [3.0e-4, 3.0e-3]}   # log-uniform float range
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

RANGE_KINDS = ("int", "float", "log")


@dataclass(frozen=True)
class ParamSpec:
    """What values one config key may take. ``kind`` is 'int', 'float', 'choice' or 'bool'.

    ``low``/``high`` bound int and float values (inclusive unless ``low_open``/``high_open``);
    ``choices`` lists the values of a 'choice'. ``default`` is the value a config that leaves the
    key out takes (strategies declare it beside the range, so each key is written once); ``doc`` is
    shown in error messages and docs.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    low_open: bool = False
    high_open: bool = False
    doc: str = ""
    default: Any = None

    def cast(self, value: Any) -> Any:
        """``value`` as the Python type this key holds (JSON may hand back 64.0 for an int)."""
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        if self.kind == "bool":
            return bool(value)
        return value

    def check(self, value: Any) -> str | None:
        """Return None when ``value`` is allowed, else what was expected (for an error message)."""
        if self.kind == "choice":
            return None if value in self.choices else f"one of {list(self.choices)}"
        if self.kind == "bool":
            return None if isinstance(value, bool) else "true or false"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"a{'n integer' if self.kind == 'int' else ' number'}{self.bounds_text()}"
        if not math.isfinite(value):
            return f"a finite number{self.bounds_text()}"
        if self.kind == "int" and not float(value).is_integer():
            return f"an integer{self.bounds_text()}"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"a value{self.bounds_text()}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"a value{self.bounds_text()}"
        return None

    def bounds_text(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return (" " + " and ".join(parts)) if parts else ""


class ParamFormError(ValueError):
    """A value has the wrong form; the message says what was expected (the caller adds the key path)."""


@dataclass(frozen=True)
class Param:
    """A parsed value: ``kind`` is 'fixed', 'choice', 'int', 'float' or 'log'."""

    kind: str
    value: Any = None
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: int | None = None

    @property
    def is_searched(self) -> bool:
        return self.kind != "fixed" and not (self.kind == "choice" and len(self.choices) == 1)

    def values_at_bounds(self) -> list[Any]:
        """Every value the spec must accept: the fixed value, each choice, or both range ends."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choice":
            return list(self.choices)
        return [self.low, self.high]

    def to_yaml(self) -> Any:
        """The YAML form this parameter was written in (for the resolved space file)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return list(self.choices)
        form: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.step is not None:
            form["step"] = self.step
        return form


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def range_rule(spec: ParamSpec | None, *, log: bool = False) -> str:
    """The rule a [low, high] pair must satisfy, e.g. '0 < low < high <= 1'."""
    left = "low"
    if spec is not None and spec.low is not None:
        left = f"{spec.low:g} {'<' if spec.low_open else '<='} low"
    elif log:
        left = "0 < low"
    right = "high"
    if spec is not None and spec.high is not None:
        right = f"high {'<' if spec.high_open else '<='} {spec.high:g}"
    return f"{left} < {right}"


def parse_param(raw: Any, spec: ParamSpec | None = None) -> Param:
    """Parse the YAML form of one value; raise ParamFormError saying what was expected.

    ``spec`` (what the key accepts) only enriches messages; ``check_against`` enforces it.
    """
    if _is_scalar(raw):
        return Param("fixed", value=raw)
    if isinstance(raw, list):
        if not raw:
            raise ParamFormError("expected a non-empty list of choices, got []")
        if not all(_is_scalar(c) for c in raw):
            raise ParamFormError(f"expected a list of plain values (numbers, strings, booleans), got {raw!r}")
        if len(set(map(repr, raw))) != len(raw):
            raise ParamFormError(f"expected distinct choices, got {raw!r}")
        return Param("choice", choices=tuple(raw))
    if isinstance(raw, dict):
        kinds = [k for k in raw if k in RANGE_KINDS]
        extra = sorted(set(raw) - set(RANGE_KINDS) - {"step"})
        if len(kinds) != 1 or extra:
            raise ParamFormError(
                f"expected a range like {{int: [low, high]}}, {{float: [low, high]}} or {{log: [low, high]}}, got {raw!r}"
            )
        kind = kinds[0]
        bounds = raw[kind]
        numeric = isinstance(bounds, list) and len(bounds) == 2
        numeric = numeric and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        if not numeric:
            raise ParamFormError(f"expected {{{kind}: [low, high]}} with two numbers, got {{{kind}: {bounds!r}}}")
        low, high = bounds
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ParamFormError(f"expected integer bounds for an int range, got [{low}, {high}]")
        if not low < high or (kind == "log" and low <= 0):
            rule = range_rule(spec, log=kind == "log")
            raise ParamFormError(f"expected [low, high] with {rule}, got [{low}, {high}]")
        step = raw.get("step")
        if step is not None:
            if kind != "int" or isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise ParamFormError(f"expected step to be a positive integer on an int range, got step: {step!r}")
            if (high - low) % step:
                raise ParamFormError(f"expected high - low to be a multiple of step {step}, got [{low}, {high}]")
        if kind == "int":
            low, high = int(low), int(high)
        else:
            low, high = float(low), float(high)
        return Param(kind, low=low, high=high, step=step)
    raise ParamFormError(f"expected a value, a list of choices or a range mapping, got {type(raw).__name__}")


def check_against(param: Param, spec: ParamSpec) -> str | None:
    """Check a parsed value against what its key accepts; return the problem text or None."""
    if param.kind in RANGE_KINDS:
        if spec.kind in ("choice", "bool"):
            return f"expected one of {list(spec.choices) or [True, False]} (a fixed value or a list), not a range"
        if spec.kind == "int" and param.kind != "int":
            return f"expected an integer range {{int: [low, high]}}{spec.bounds_text()}, got a {param.kind} range"
    for value in param.values_at_bounds():
        problem = spec.check(value)
        if problem:
            if param.kind in RANGE_KINDS:
                rule = range_rule(spec, log=param.kind == "log")
                return f"expected [low, high] with {rule}, got [{param.low:g}, {param.high:g}]"
            if param.kind == "choice":
                return f"expected every choice to be {problem}, got {value!r} in {list(param.choices)!r}"
            return f"expected {problem}, got {value!r}"
    return None
