"""Which trial do I take, and how the front grew: picks and the hypervolume history over a run's
trials table.

Numpy and pandas over the maths of ``cellsparse.pareto`` (the front, hypervolume, the knee), so that
``runner.export``, ``cellsparse.Run`` and the report pick the same trial. Every function takes the
objectives in their own units and directions ("maximize" or "minimize").

Which trials count: a trial is *eligible* when its state is COMPLETE, it is feasible (within every
constraint) and all its objective values are finite. Failed, pruned, running and infeasible trials
never enter a front, a hypervolume or a pick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from cellsparse.errors import UserError
from cellsparse.objective_info import ideal_point, objective_info
from cellsparse.pareto import hypervolume, knee_point, normalized_hypervolume, pareto_mask
from cellsparse.rundir import eligible_mask

__all__ = ["hypervolume_history", "most_accurate", "most_accurate_within_budget", "pick_trial"]

# ---------------------------------------------------------------------------------- trials tables


def _values(trials: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    return np.column_stack([pd.to_numeric(trials[o], errors="coerce").to_numpy(float) for o in objectives])


def hypervolume_history(
    trials: pd.DataFrame,
    directions: Mapping[str, str],
    reference_point: Mapping[str, float],
    by: Literal["number", "time"] = "number",
) -> pd.DataFrame:
    """Hypervolume of the eligible trials seen so far, after each trial.

    ``by="number"`` walks the trials in trial-number order and returns columns ``number`` and
    ``hypervolume`` (one row per trial, ineligible ones repeating the last value). ``by="time"`` walks
    eligible trials in order of ``datetime_complete`` and returns ``elapsed_s`` (seconds since the
    earliest ``datetime_start``), ``number`` and ``hypervolume``. Where every objective declares its
    ideal value, a ``normalized`` column holds ``cellsparse.pareto.normalized_hypervolume`` (the
    share of the box between the reference point and the ideal: the figure docs/benchmarks.md quotes).
    """
    names = list(directions)
    dirs = [directions[n] for n in names]
    ref = [float(reference_point[n]) for n in names]
    ok = eligible_mask(trials, names)
    if by == "number":
        frame = trials.assign(_ok=ok.to_numpy()).sort_values("number", kind="stable")
    elif by == "time":
        done, start = (_times(trials, c) for c in ("datetime_complete", "datetime_start"))
        frame = trials.assign(_ok=ok.to_numpy() & done.notna().to_numpy(), _done=done)
        frame = frame[frame["_ok"]].sort_values(["_done", "number"], kind="stable")
        origin = start.min() if start.notna().any() else frame["_done"].min()
    else:
        raise ValueError(f"by must be 'number' or 'time', but got {by!r}")
    values = _values(frame, names)
    ideal = ideal_point(names)
    try:  # a reference point no worse than the ideal somewhere leaves no box to normalise by
        normalized_hypervolume(np.empty((0, len(names))), dirs, ref, ideal) if ideal is not None else None
    except ValueError:
        ideal = None
    hv, share, kept, out, shares = 0.0, 0.0, np.empty((0, len(names))), [], []
    for row, is_ok in zip(values, frame["_ok"].to_numpy(), strict=True):
        if is_ok:
            kept = np.vstack([kept, row])
            kept = kept[pareto_mask(kept, dirs)]
            hv = hypervolume(kept, dirs, ref)
            share = normalized_hypervolume(kept, dirs, ref, ideal) if ideal is not None else math.nan
        out.append(hv)
        shares.append(share if ideal is not None else math.nan)
    result = pd.DataFrame({"number": frame["number"].to_numpy(), "hypervolume": out})
    if ideal is not None:
        result["normalized"] = shares
    if by == "time":
        result.insert(0, "elapsed_s", (frame["_done"] - origin).dt.total_seconds().to_numpy())
    return result


def _times(trials: pd.DataFrame, column: str) -> pd.Series:
    """An ISO-time column as UTC timestamps (NaT where empty, unreadable or absent)."""
    if column not in trials.columns:
        return pd.Series(pd.NaT, index=trials.index, dtype="datetime64[ns, UTC]")
    return pd.to_datetime(trials[column], errors="coerce", utc=True, format="ISO8601")


def _eligible(trials: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    return trials[eligible_mask(trials, objectives).to_numpy()]


def most_accurate(trials: pd.DataFrame, directions: Mapping[str, str] | None = None) -> int | None:
    """Trial number with the best accuracy among eligible trials (ties: fewest FLOPs, then lowest number)."""
    objectives = list(directions) if directions else ["accuracy"]
    if "accuracy" not in objectives:
        objectives = ["accuracy", *objectives]
    pool = _eligible(trials, objectives)
    if pool.empty:
        return None
    keys = [pd.to_numeric(pool["accuracy"]).to_numpy() * -1.0]
    if "flops" in pool.columns:
        keys.append(pd.to_numeric(pool["flops"], errors="coerce").fillna(np.inf).to_numpy())
    keys.append(pool["number"].to_numpy())
    return int(pool["number"].to_numpy()[np.lexsort(keys[::-1])[0]])


def most_accurate_within_budget(
    trials: pd.DataFrame, max_flops: float, directions: Mapping[str, str] | None = None
) -> int | None:
    """Most accurate eligible trial whose FLOPs are at most ``max_flops`` (None when none fits)."""
    objectives = list(directions) if directions else ["accuracy", "flops"]
    objectives = list(dict.fromkeys(["accuracy", "flops", *objectives]))
    pool = _eligible(trials, objectives)
    pool = pool[pd.to_numeric(pool["flops"]) <= float(max_flops)]
    return most_accurate(pool, {"accuracy": "maximize", "flops": "minimize"})


def _knee_objectives(directions: Mapping[str, str]) -> list[str]:
    """The objectives a knee is taken on, in the order that breaks ties: accuracy, then FLOPs, then the
    others as searched. Every searched objective counts: a trial is not a knee of three objectives
    because it looks like one on two of them."""
    names = list(directions)
    first = ["accuracy"] if "accuracy" in names else names[:1]
    second = ["flops"] if "flops" in names and first != ["flops"] else []
    return [*first, *second, *[n for n in names if n not in first + second]]


def pick_trial(
    trials: pd.DataFrame,
    directions: Mapping[str, str] | Sequence[tuple[str, str]],
    how: Literal["knee", "accuracy", "budget"],
    max_flops: float | None = None,
) -> int:
    """Trial number to export, chosen among eligible trials (COMPLETE, feasible, finite objectives).

    ``directions`` maps objective name (a trials.csv column) to "maximize"/"minimize" (a mapping or
    (name, direction) pairs, in the space's objective order).
    ``how="knee"``: the knee of the front over every objective (see :func:`knee_point`): with accuracy
    and FLOPs, where that trade-off bends most. ``how="accuracy"``: the most accurate trial.
    ``how="budget"``: the most accurate trial with FLOPs at most ``max_flops``.
    Raises UserError when no trial qualifies or the request cannot be answered.
    """
    directions = dict(directions)
    if how not in ("knee", "accuracy", "budget"):
        raise UserError(f"how must be one of 'knee', 'accuracy', 'budget', but got {how!r}")
    needed = {"knee": list(directions), "accuracy": ["accuracy"], "budget": ["accuracy", "flops"]}[how]
    missing = [c for c in ["number", "state", *needed] if c not in trials.columns]
    if missing:
        raise UserError(f"the trials table has no column(s) {missing}; cannot pick by {how!r}")
    if how == "knee":
        if len(directions) < 2:
            raise UserError("the knee needs at least two objectives; pick by 'accuracy' instead")
        names = _knee_objectives(directions)
        pool = _eligible(trials, names)
        if pool.empty:
            raise UserError("no complete, feasible trial with finite objectives to pick from")
        index = knee_point(
            _values(pool, names), [directions[n] for n in names], [objective_info(n).log_scale for n in names]
        )
        return int(pool["number"].to_numpy()[index])
    if how == "accuracy":
        number = most_accurate(trials, {**dict(directions), "accuracy": "maximize"})
        if number is None:
            raise UserError("no complete, feasible trial with an accuracy to pick from")
        return number
    if max_flops is None:
        raise UserError("picking within a FLOPs budget needs max_flops (e.g. --max-flops 2e7)")
    number = most_accurate_within_budget(trials, max_flops, directions)
    if number is None:
        raise UserError(f"no complete, feasible trial has FLOPs <= {max_flops:g}; raise the budget")
    return number
