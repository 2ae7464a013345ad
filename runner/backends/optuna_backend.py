"""The in-process backend: ``study.optimize`` runs the trials one at a time in this process.

No Ray start-up, no worker processes: the quickest way to run a small search, to debug a strategy
(breakpoints work), and the reference for reproducibility (one seed gives the same trials and the
same numbers on CPU). A trial that raises is recorded FAIL with its error as a user attribute (and
its traceback in ``trials/<n>/error.txt``) and the search goes on.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import optuna

from runner import rundir
from runner.backends.common import (
    PAYLOAD_KEY,
    ConfigSampler,
    TrialSettings,
    describe_error,
    execute,
    objective_values,
    trial_attrs,
)
from search_space.spec import SearchSpace


def write_traceback(run_dir: Path, number: int, err: BaseException) -> None:
    directory = rundir.trial_dir(run_dir, number)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "error.txt").write_text("".join(traceback.format_exception(err)), encoding="utf-8")


def run_optuna(
    space: SearchSpace,
    run_dir: Path,
    *,
    study: optuna.Study,
    n_trials: int,
    on_finished: Callable[[optuna.Study, int], None],
) -> None:
    """Run ``n_trials`` more trials of ``study`` (already opened on the run's journal, with its sampler)."""
    settings = TrialSettings.for_run(space, run_dir)
    sample = ConfigSampler(space)
    names = space.objective_names

    def objective(trial: optuna.Trial) -> list[float]:
        payload = sample(trial)[PAYLOAD_KEY]
        try:
            metrics = execute(payload, settings, report=None)
            values = objective_values(metrics, names)
        except Exception as err:
            trial.set_user_attr(rundir.ATTR_ERROR, describe_error(err))
            write_traceback(Path(settings.run_dir), trial.number, err)
            raise
        for key, value in trial_attrs(metrics).items():
            trial.set_user_attr(key, value)
        return values

    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=space.search.timeout_s,
        catch=(Exception,),
        callbacks=[lambda s, t: on_finished(s, t.number)],
        show_progress_bar=sys.stderr.isatty(),
    )
