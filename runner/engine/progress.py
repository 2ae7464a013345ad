"""What a person watching a search sees while trials run: elapsed time and an ETA, per trial and for
the whole search, whichever executor runs the trials; and the line each finished trial gets
(:class:`TrialFinished`, which also rewrites trials.csv).

The search driver tells a :class:`Progress` when it asks for a trial (``started``) and when a trial
reports an epoch (``epoch``: every executor hands each epoch's figures to ``SearchDriver.report``); the
trials-finished callback asks it for the timing that ends each trial's line (``finished``). Lines go
to ``emit`` (stdout for the commands, the ``cellsparse`` logger for the Python API).

Modes (``--progress``, or ``search(progress=...)``):

=========  ==================================================================================
epochs     a line when a trial starts and after each of its epochs, and one when it finishes
trials     one line per finished trial (what a log file wants)
none       no progress lines (``--quiet``): the header, the final front and errors only
auto       epochs when the output is a terminal, trials otherwise
=========  ==================================================================================

The search's ETA counts the work left in trials (a trial half-way through its epochs counts as half
done) against the time this session has run: ``elapsed * (1 - done) / done``. It assumes the
remaining trials cost what the finished ones did, which a sampler moving to cheaper or dearer
configs makes approximate; before the first epoch it says nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import optuna

from cellsparse import rundir
from cellsparse.objective_info import declared_objectives, format_figure, objective_info
from runner.engine.study import pareto_trials, trials_done
from search_space.spec import SearchSpace

MODES = ("auto", "epochs", "trials", "none")


def resolve_mode(mode: str, stream: TextIO | None = None) -> str:
    """``auto`` made concrete: ``epochs`` when ``stream`` (default stdout) is a terminal, else ``trials``."""
    if mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, but got {mode!r}")
    if mode != "auto":
        return mode
    stream = sys.stdout if stream is None else stream
    try:
        return "epochs" if stream.isatty() else "trials"
    except (AttributeError, ValueError):  # a closed or unusual stream
        return "trials"


def clock_text(seconds: float | None) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Elapsed times and ETAs of a search session (see the module docstring)."""

    def __init__(self, *, trials: int, mode: str, emit: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.trials = max(1, trials)  # the trials this session is to run
        self.mode = mode
        self.emit = emit
        self.clock = clock
        self.start = clock()
        self._started: dict[int, float] = {}
        self._epochs: dict[int, int] = {}  # a running trial's planned epochs
        self._done_epochs: dict[int, int] = {}
        self._finished = 0.0  # trials of this session finished (a trial cut short counts whole)

    # --- what the driver tells --------------------------------------------------------------------
    def started(self, number: int, epochs: int, strategy: str = "") -> None:
        self._started[number] = self.clock()
        self._epochs[number] = max(0, int(epochs))
        self._done_epochs[number] = 0
        if self.mode == "epochs" and self._epochs[number]:  # an over-budget config is measured, not trained
            self.emit(f"  trial {number} started{f' ({strategy})' if strategy else ''}: {self._epochs[number]} epochs"
                      f"  | search {self._search_text()}")

    def epoch(self, number: int, row: dict[str, Any]) -> None:
        if number not in self._started:
            return
        epoch, total = int(row.get("epoch") or 0), self._epochs.get(number, 0)
        self._done_epochs[number] = min(epoch, total) if total else epoch
        if self.mode != "epochs":
            return
        elapsed = self.clock() - self._started[number]
        eta = elapsed / epoch * (total - epoch) if epoch > 0 and total >= epoch else None
        figures = "".join(f"  {label} {row[key]:.4f}" for key, label in
                          (("val_accuracy", "val_acc"), ("train_loss", "loss"))
                          if isinstance(row.get(key), (int, float)))
        self.emit(f"  trial {number} epoch {epoch}/{total or '?'}{figures}  {clock_text(elapsed)} elapsed, "
                  f"ETA {clock_text(eta)}  | search {self._search_text()}")

    def finished(self, number: int) -> str:
        """The timing that ends a finished trial's line: its own time and the search's elapsed and ETA."""
        began = self._started.pop(number, None)
        self._epochs.pop(number, None)
        self._done_epochs.pop(number, None)
        self._finished += 1
        own = f"{clock_text(self.clock() - began)}; " if began is not None else ""
        return f"({own}search {self._search_text()})"

    # --- the search as a whole --------------------------------------------------------------------
    def done_fraction(self) -> float:
        """Share of this session's trials done, running trials counted by their finished epochs."""
        running = sum(self._done_epochs[n] / self._epochs[n] for n in self._epochs if self._epochs[n])
        return min(1.0, (self._finished + running) / self.trials)

    def search_eta(self) -> float | None:
        done = self.done_fraction()
        if done <= 0:
            return None
        return (self.clock() - self.start) * (1 - done) / done

    def _search_text(self) -> str:
        elapsed = self.clock() - self.start
        return f"{clock_text(elapsed)} elapsed, ETA {clock_text(self.search_eta())}"


# Figures that are not objectives but are printed beside them, with the style they are printed in.
_FIGURE_STYLES = {"test_accuracy": "fraction", "val_accuracy": "fraction", "params_count": "count"}


def format_value(name: str, value: Any) -> str:
    """An objective's (or a trial figure's) value for a terminal line."""
    if name in declared_objectives():
        return objective_info(name).format(value)
    return format_figure(value, _FIGURE_STYLES.get(name, "number"))


def print_line(line: str) -> None:
    """Write one progress line to the current stdout.

    Not ``print`` itself: Ray's tqdm integration swaps ``builtins.print`` when a worker dies, and an
    object holding the old one can no longer be pickled."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class TrialFinished:
    """Called in the driver after each trial is told: rewrite trials.csv and print one line (ended by
    the trial's time and the search's elapsed time and ETA when a ``progress`` keeps them)."""

    def __init__(self, run_dir: Path, space: SearchSpace, *, total: int, emit: Callable[[str], None] = print_line,
                 progress: Progress | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.space = space
        self.total = total
        self.emit = emit
        self.progress = progress

    def __call__(self, study: optuna.Study, number: int) -> None:
        names = self.space.objective_names
        rundir.write_trials_csv(self.run_dir, study, names)
        trial = study.get_trials(deepcopy=False)[number]
        done = trials_done(study)
        state = trial.state.name
        strategy = trial.user_attrs.get(rundir.ATTR_STRATEGY, "?")
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.values:
            figures = "  ".join(f"{n}={format_value(n, v)}" for n, v in zip(names, trial.values, strict=True))
            if not rundir.is_feasible(trial):
                figures += "  (over budget, not trained)"
        else:
            figures = trial.user_attrs.get(rundir.ATTR_ERROR) or rundir.INTERRUPTED
        front = len(pareto_trials(study))
        timing = f"  {self.progress.finished(number)}" if self.progress is not None else ""
        self.emit(f"[{done}/{self.total}] trial {number:<3d} {state:<8s} {strategy:<14s} {figures}  front={front}{timing}")

