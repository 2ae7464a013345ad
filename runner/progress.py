"""What a person watching a search sees while trials run: elapsed time and an ETA, per trial and for
the whole search, on both backends.

The search driver tells a :class:`Progress` when it asks for a trial (``started``) and when a trial
reports an epoch (``epoch``: both backends hand every epoch's figures to ``SearchDriver.report``); the
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
from typing import Any, TextIO

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
