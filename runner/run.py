"""A run directory as a Python object: what ``search()`` returns and ``Run.load`` reads back.

    from runner.search import search
    run = search("search_space/cells.yaml", trials=10, backend="optuna", out="runs/x")
    run = Run.load("runs/x")                       # the same object from a finished run
    run.trials, run.front                          # pandas DataFrames (trials.csv; its Pareto rows)
    run.pick("knee"), run.pick("accuracy"), run.pick(5e6)   # trial numbers (5e6: best within 5 MFLOPs)
    run.report_path                                # report.html (run.report() rebuilds it)
    export_dir = run.export()                      # the knee, as cellsparse export does
    trial = run.trial(3)                           # config, metrics, history; trial.load_model()

Everything is read from the run directory (trials.csv, space.yaml, run.json), so a run copied to
another machine loads the same way. ``refresh()`` re-reads it while a search is still writing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from cellsparse.errors import UserError
from cellsparse.log import logger
from cellsparse.rundir import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, load_json, read_run
from reports.build import build_report
from reports.picks import pick_trial
from runner.engine.checkpoint import load_trained
from runner.export import export_run

PICKS = ("knee", "accuracy")


class Run:
    """One run directory: its trials, Pareto front, picks, report and export."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.refresh()

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Load ``runs/<name>``; UserError naming the path when it is not a run directory."""
        return cls(path)

    def refresh(self) -> Run:
        """Read the run directory again (after more trials finished)."""
        self._run = read_run(self.path)
        return self

    def __repr__(self) -> str:
        done = int((self.trials["state"] == "COMPLETE").sum())
        return f"Run({str(self.path)!r}: {len(self.trials)} trials, {done} complete, {len(self.front)} on the front)"

    @property
    def name(self) -> str:
        return self._run.name

    @property
    def objectives(self) -> dict[str, str]:
        """Objective name -> "maximize" | "minimize", in the space's order."""
        return dict(self._run.directions)

    @property
    def space(self) -> dict[str, Any]:
        """The resolved space that ran (space.yaml), as a dict."""
        return dict(self._run.space.raw)

    @property
    def trials(self) -> pd.DataFrame:
        """Every trial (trials.csv): number, state, feasible, objectives, test_accuracy, config.* ..."""
        return self._run.trials.copy()

    @property
    def front(self) -> pd.DataFrame:
        """The Pareto front over all objectives (complete, feasible trials), in trial order."""
        return self._run.trials[self._run.pareto()].reset_index(drop=True)

    @property
    def report_path(self) -> Path:
        """Where the HTML report is (the search writes it at the end; ``report()`` rebuilds it)."""
        return self.path / "report.html"

    def report(self, out: str | Path | None = None) -> Path:
        """(Re)build the HTML report; returns its path."""
        return Path(build_report(self.path, None if out is None else Path(out)))

    def trial_dir(self, number: int) -> Path:
        return self._run.trial_dir(number)

    def trial(self, number: int) -> TrialResult:
        """Trial ``number``: its state, objective values, config, final metrics and per-epoch history,
        and its trained model (``load_model()``). UserError when the run has no such trial."""
        rows = self._run.trials[self._run.trials["number"] == int(number)]
        if rows.empty:
            raise UserError(f"{self.path}: no trial {number} (the run has trials "
                            f"{_numbers(self._run.trials['number'].tolist())})")
        row = rows.iloc[0]
        directory = self.trial_dir(int(number))
        config = load_json(directory / CONFIG_FILE)
        metrics = load_json(directory / METRICS_FILE)
        history = load_json(directory / HISTORY_FILE)
        values = {name: None if pd.isna(row[name]) else float(row[name]) for name in self.objectives}
        return TrialResult(
            number=int(number), state=str(row["state"]), strategy=str(row["strategy"]), values=values,
            config=config if isinstance(config, dict) else {}, metrics=metrics if isinstance(metrics, dict) else {},
            history=history if isinstance(history, list) else [], path=directory,
            error=None if pd.isna(row.get("error")) else str(row.get("error")),
        )

    def pick(self, how: str | float = "knee") -> int:
        """A trial number: ``"knee"`` of the accuracy/FLOPs front (what export takes by default),
        ``"accuracy"`` (the most accurate), or a number: the most accurate within that many FLOPs."""
        how, budget = _how(how)
        return pick_trial(self._run.trials, self._run.directions, how, max_flops=budget)

    def export(self, pick: str | float = "knee", *, trial: int | None = None, out: str | Path | None = None,
               formats: Sequence[str] = ("onnx", "pt2"), measure: bool = True, threads: int = 1,
               replace: bool = False, log: Callable[[str], None] | None = None) -> Path:
        """Export a trial as ``cellsparse export`` does (checked against the eager model, with a model
        card); returns the export directory (``runs/<name>/export/trial-<n>`` unless ``out``), which
        ``runner.predict.predict`` takes. ``pick`` as in :meth:`pick`, or a given ``trial``; an export
        already in that folder is replaced only with ``replace=True``. Progress goes to ``log``
        (default: the ``cellsparse`` logger, see ``cellsparse.log``)."""
        how, budget = _how(pick)
        result = export_run(self.path, trial=trial, pick=how, max_flops=budget, formats=formats,
                            out=None if out is None else Path(out), measure=measure, threads=threads,
                            replace=replace, log=log or logger.info)
        return result.out


@dataclass(frozen=True)
class TrialResult:
    """One trial of a run, read from ``trials/<n>/`` (as Ray Tune's ``Result`` or Optuna's
    ``FrozenTrial`` hold one): what it was, how it ended and what it learnt. ``config`` rebuilds the
    network (``search_space.build_model``); ``history`` holds one dict per epoch (val_accuracy, k,
    train_loss, epoch_time_s ...); ``metrics`` the final figures (empty for an unfinished trial)."""

    number: int
    state: str  # COMPLETE | FAIL | PRUNED | RUNNING | WAITING
    strategy: str
    values: dict[str, float | None]  # objective -> value (None where the trial has none)
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    path: Path
    error: str | None = None

    def load_model(self) -> nn.Module:
        """The trained network at its final k, in eval mode on the CPU (UserError for a trial that never
        finished training, or an infeasible one, which never trained)."""
        return load_trained(self.path, self.number).model


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:8])) + (" ..." if len(numbers) > 8 else "") if numbers else "none"


def _how(pick: str | float) -> tuple[str, float | None]:
    """(how, max_flops) for reports.picks.pick_trial from "knee" | "accuracy" | a FLOPs budget."""
    if isinstance(pick, bool) or not isinstance(pick, (str, int, float)):
        raise UserError(f"pick must be 'knee', 'accuracy' or a FLOPs budget (a number), but got {pick!r}")
    if isinstance(pick, str):
        if pick not in PICKS:
            raise UserError(f"pick must be 'knee', 'accuracy' or a FLOPs budget (a number), but got {pick!r}")
        return pick, None
    if not pick > 0:
        raise UserError(f"a FLOPs budget must be > 0, but got {pick!r}")
    return "budget", float(pick)


def load_run(path: str | Path) -> Run:
    """``Run.load(path)``."""
    return Run.load(path)


def export(run_dir: str | Path, pick: str | float = "knee", **options: Any) -> Path:
    """``Run.load(run_dir).export(pick, **options)``: the export directory, which ``predict`` takes."""
    return Run.load(run_dir).export(pick, **options)
