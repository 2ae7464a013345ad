"""The run's Optuna study: opened from the run directory's journal, its unfinished trials closed,
its finished ones counted, its front read. The driver's side only."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna

from cellsparse import rundir
from search_space.spec import SearchSpace


def open_study(space: SearchSpace, run_dir: Path, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The run's study in its journal (created on first use; ``study_name`` is the space name).

    An existing study is loaded, which reads the journal only: ``create_study(load_if_exists=True)``
    would append a creation record at every call, a write that fails on a full disk just when the
    session is recording how it ended."""
    storage = rundir.open_storage(run_dir)
    try:
        study = optuna.load_study(study_name=space.name, storage=storage, sampler=sampler)
    except KeyError:  # no such study yet
        study = optuna.create_study(storage=storage, study_name=space.name, directions=space.directions,
                                    sampler=sampler)
    name_metrics(study, space.objective_names)
    return study


def fail_unfinished(study: optuna.Study) -> list[int]:
    """Mark RUNNING/WAITING trials FAIL (left by a stopped or killed driver); return their numbers.

    They carry no error attribute, which is how ``rundir.is_interrupted`` tells them from real
    failures: they do not count toward the trial budget and a resumed search replaces them.
    """
    stale = [
        t.number
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
    for number in stale:
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return stale


def trials_done(study: optuna.Study) -> int:
    """Trials that used up the budget (COMPLETE, PRUNED, FAIL with an error; not interrupted ones)."""
    return sum(rundir.counts_as_run(t) for t in study.get_trials(deepcopy=False))


def pareto_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The feasible Pareto front, by trial number (``best_trials`` is constraint-aware in Optuna 5)."""
    try:
        return sorted(study.best_trials, key=lambda t: t.number)
    except (ValueError, RuntimeError):
        return []


def name_metrics(study: optuna.Study, names: Sequence[str]) -> None:
    """Name the objectives in the study (optuna-dashboard and ``study.metric_names`` show them)."""
    if study.metric_names != list(names):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, unchanged through 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(names))

