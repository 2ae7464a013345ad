"""Which trial of a run to export: one given by number, or the report's own pick (knee, most
accurate, most accurate within a FLOPs budget), with one line saying why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cellsparse.errors import UserError
from cellsparse.rundir import RunRecord, eligible_mask
from reports.picks import pick_trial


@dataclass(frozen=True)
class Choice:
    """The trial to export and one line saying why it was chosen."""

    number: int
    how: str  # "trial" (given), "knee", "accuracy" or "budget"
    reason: str


def _figures(row: Any, objectives: Sequence[str]) -> str:
    parts = []
    for name in objectives:
        value = row.get(name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        parts.append(f"{name} {number:.4g}" if name != "accuracy" else f"{name} {number:.3f}")
    return ", ".join(parts)


def choose_trial(run: RunRecord, *, trial: int | None, pick: str, max_flops: float | None) -> Choice:
    """The trial to export from a loaded run; UserError when none qualifies.

    A given ``trial`` must be COMPLETE and feasible. Otherwise ``pick`` goes to
    ``reports.picks.pick_trial`` (the report's own picks): ``budget`` takes ``max_flops`` or, when
    not given, the run's ``constraints.max_flops``.
    """
    trials = run.trials
    objectives = run.objectives
    if trial is not None:
        rows = trials[trials["number"] == trial]
        if rows.empty:
            numbers = ", ".join(str(n) for n in trials["number"].tolist()[:20]) or "none"
            raise UserError(f"{run.path}: no trial {trial} in trials.csv (trials: {numbers})")
        row = rows.iloc[0]
        if str(row["state"]).upper() != "COMPLETE":
            done = trials.loc[trials["state"] == "COMPLETE", "number"].tolist()
            raise UserError(
                f"trial {trial} is {str(row['state']).upper()}, not COMPLETE; complete trials: "
                f"{', '.join(map(str, done[:20])) or 'none'}"
            )
        if not bool(eligible_mask(rows, [o for o in objectives if o in rows.columns]).iloc[0]):
            raise UserError(f"trial {trial} is infeasible (over a constraint, never trained); pick another trial")
        return Choice(trial, "trial", f"trial {trial} ({row['strategy']}) as asked: {_figures(row, objectives)}")
    if pick == "budget" and max_flops is None:
        max_flops = run.space.limit("flops")
    if not eligible_mask(trials, objectives).any():
        raise UserError(f"{run.path}: no complete, feasible trial to export (trials.csv has {len(trials)} trials)")
    number = pick_trial(trials, run.directions, pick, max_flops=max_flops)
    row = trials[trials["number"] == number].iloc[0]
    why = {
        "knee": ("the knee of the accuracy/FLOPs front" if len(objectives) <= 2
                 else f"the knee of the front of all {len(objectives)} objectives") + " (where the trade-off bends most)",
        "accuracy": "the most accurate complete, feasible trial",
        "budget": f"the most accurate trial within {max_flops:g} FLOPs" if max_flops is not None else "",
    }[pick]
    return Choice(number, pick, f"trial {number} ({row['strategy']}): {why}; {_figures(row, objectives)}")

