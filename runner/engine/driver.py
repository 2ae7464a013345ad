"""The search driver: the one place that asks Optuna for trials and tells it their results.

Executors (``runner.engine.executor``) only execute: the in-process one calls the trial function
itself, the Ray one hands payloads to Ray Tune workers through a ``Searcher`` written against Tune's
public interface, a plugin's as it likes. All go through this object, so a trial ends the same way
whichever ran it:

    number, payload = driver.ask()                    # sample a config (define-by-run), check budgets
    driver.placed(number, node)                       # where it runs (on a Ray cluster)
    stop = driver.report(number, epoch, row)          # after each epoch: early stopping's decision
    driver.complete(number, metrics)                  # COMPLETE with its figures as user attributes
    driver.fail(number, err_or_reason, traceback=...) # FAIL with one error line (and error.txt)
    driver.prune(number)                              # PRUNED by early stopping, last figures kept
    driver.halted                                     # set when the storage refused a write: ask no more

Every tell is followed by ``on_finished(study, number)`` (trials.csv and the progress line); a
``progress`` (``runner.engine.progress``) hears of every ask and every epoch, so every executor shows
the same elapsed times and ETAs. A trial the driver asked for but never heard back from stays RUNNING in the
journal; ``runner.search`` marks such trials interrupted when the session ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from cellsparse import rundir
from cellsparse.errors import describe_error
from cellsparse.files import storage_errno
from runner.engine.early_stopping import SuccessiveHalving
from runner.engine.execute import TrialError, objective_values, trial_attrs
from runner.engine.progress import Progress
from runner.engine.sampler import PAYLOAD_KEY, ConfigSampler
from search_space.spec import SearchSpace

logger = logging.getLogger(__name__)



def early_stopping_rule(space: SearchSpace, study: optuna.Study) -> SuccessiveHalving | None:
    """The space's early-stopping rule with the rung values earlier sessions recorded, or None."""
    config = space.search.early_stopping
    if config.name == "none":
        return None
    epochs = max(int(v) for v in space.training["epochs"].values_at_bounds())
    rule = SuccessiveHalving(config, directions=space.directions, max_epochs=epochs)
    rebuild_rungs(rule, study.get_trials(deepcopy=False))
    return rule


def rebuild_rungs(rule: SuccessiveHalving, trials: list[optuna.trial.FrozenTrial]) -> int:
    """Enter the rung values recorded by earlier sessions into ``rule`` (``--resume``); how many."""
    entered = 0
    for trial in trials:
        for key, values in trial.user_attrs.items():
            if key.startswith(rundir.ATTR_RUNG) and key[len(rundir.ATTR_RUNG):].isdigit():
                entered += rule.record(trial.number, int(key[len(rundir.ATTR_RUNG):]), values)
    return entered


class SearchDriver:
    """Owns the study's ask/tell for one search session (see the module docstring)."""

    def __init__(
        self,
        space: SearchSpace,
        run_dir: Path,
        study: optuna.Study,
        *,
        on_finished: Callable[[optuna.Study, int], None] | None = None,
        early_stopping: SuccessiveHalving | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.space = space
        self.run_dir = Path(run_dir)
        self.study = study
        self.names = space.objective_names
        self.on_finished = on_finished
        self.early_stopping = early_stopping
        self.progress = progress
        self._sample = ConfigSampler(space)
        self._running: dict[int, optuna.Trial] = {}
        self._epochs: dict[int, int] = {}  # a trial's own epochs: it is never judged at its last
        self._last: dict[int, dict[str, Any]] = {}
        self.halted: BaseException | str | None = None  # the storage error that stopped this session

    # --- asking ----------------------------------------------------------------------------------
    def ask(self) -> tuple[int, dict[str, Any]]:
        """A new trial: its number and the payload a backend executes."""
        trial = self.study.ask()
        self._running[trial.number] = trial
        payload = self._sample(trial)[PAYLOAD_KEY]
        self._epochs[trial.number] = int(payload["config"].get("epochs", 0))
        if self.progress is not None:
            trained = payload["feasible"] and not payload["build_error"]
            self.progress.started(trial.number, self._epochs[trial.number] if trained else 0,
                                  str(payload["config"].get("strategy", "")))
        return trial.number, payload

    @property
    def running(self) -> list[int]:
        """Trials asked for and not yet told."""
        return list(self._running)

    # --- during a trial --------------------------------------------------------------------------
    def placed(self, number: int, node: str) -> None:
        """Where a trial runs (a cluster node): recorded with the trial, for trials.csv and the report."""
        trial = self._running.get(number)
        if trial is not None:
            trial.set_user_attr(rundir.ATTR_NODE, node)

    def report(self, number: int, epoch: int, row: dict[str, Any]) -> bool:
        """A trial's figures after ``epoch``; True when early stopping says it should stop now."""
        if number in self._running and self.progress is not None:
            try:
                self.progress.epoch(number, row)
            except Exception:  # noqa: BLE001 - a progress line must not stop the trial
                logger.warning("progress update failed", exc_info=True)
        if number not in self._running or epoch >= self._epochs.get(number, 0):
            return False
        values = [row.get(name) for name in self.names]
        if any(not isinstance(v, (int, float)) for v in values):
            return False
        self._last[number] = {"epoch": epoch, **{name: float(v) for name, v in zip(self.names, values, strict=True)}}
        if self.early_stopping is None or not self.early_stopping.record(number, epoch, values):
            return False
        self._running[number].set_user_attr(f"{rundir.ATTR_RUNG}{epoch}", [float(v) for v in values])  # for --resume
        return self.early_stopping.should_stop(number, epoch)

    # --- telling ---------------------------------------------------------------------------------
    def complete(self, number: int, metrics: dict[str, Any]) -> None:
        """Tell COMPLETE with the objective values; FAIL instead when one is missing or not finite."""
        trial = self._running.get(number)
        if trial is None:
            return
        try:
            values = objective_values(metrics, self.names)
        except TrialError as err:
            self.fail(number, err)
            return
        for key, value in trial_attrs(metrics).items():
            trial.set_user_attr(key, value)
        self._tell(number, optuna.trial.TrialState.COMPLETE, values)

    def fail(self, number: int, error: BaseException | str, *, traceback: str | None = None) -> None:
        """Tell FAIL with one error line in the journal and, when given, the traceback in error.txt.

        A trial that failed because the storage refused a write (a full disk, a read-only folder) is
        not the config's fault: it is told FAIL without an error, as interrupted (it does not count,
        ``--resume`` replaces it), and the driver halts (``halted``): every later trial would fail alike."""
        trial = self._running.get(number)
        if trial is None:
            return
        if storage_errno(error) is not None:
            self.halt(error)
            self._tell(number, optuna.trial.TrialState.FAIL)
            return
        trial.set_user_attr(rundir.ATTR_ERROR, describe_error(error) if isinstance(error, BaseException) else str(error))
        if traceback:
            rundir.write_traceback(self.run_dir, number, traceback)
        self._tell(number, optuna.trial.TrialState.FAIL)

    def prune(self, number: int) -> None:
        """Tell PRUNED (stopped by early stopping); the epoch and the figures it stopped at are kept."""
        trial = self._running.get(number)
        if trial is None:
            return
        last = self._last.get(number, {})
        if "epoch" in last:
            trial.set_user_attr(rundir.ATTR_STOPPED_AT, last["epoch"])
        for name in self.names:
            if name in last:
                trial.set_user_attr(rundir.ATTR_LAST + name, last[name])
        self._tell(number, optuna.trial.TrialState.PRUNED)

    def _tell(self, number: int, state: optuna.trial.TrialState, values: list[float] | None = None) -> None:
        trial = self._running.pop(number)
        self._last.pop(number, None)
        self._epochs.pop(number, None)
        try:
            self.study.tell(trial, values, state=state)
        except Exception as err:  # noqa: BLE001 - never leave a RUNNING trial behind
            trial.set_user_attr(rundir.ATTR_ERROR, f"could not record the result: {describe_error(err)}")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if self.on_finished is not None:
            try:
                self.on_finished(self.study, number)
            except Exception as err:  # noqa: BLE001 - a progress line must not stop the search
                if storage_errno(err) is not None:
                    self.halt(err)  # but a disk that refuses trials.csv refuses the next trial too
                else:
                    logger.warning("progress update failed", exc_info=True)

    def halt(self, error: BaseException | str) -> None:
        """Ask no more trials: the storage refused a write (``error``, the first one, is kept in ``halted``)."""
        if self.halted is None:
            self.halted = error
