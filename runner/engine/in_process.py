"""The in-process executor (``backend: optuna``): trials run one at a time in this process, asked
for and told through the search driver.

No Ray start-up, no worker processes: the quickest way to run a small search, to debug a strategy
(breakpoints work), and the reference for reproducibility (one seed gives the same trials and the
same numbers on CPU). A trial that raises is recorded FAIL with its error line (and its traceback in
``trials/<n>/error.txt``) and the search goes on; a trial early stopping cuts at a rung is PRUNED.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from cellsparse.errors import UserError
from runner.engine.driver import SearchDriver
from runner.engine.execute import TrialSettings, execute
from runner.engine.executor import Executor, register_executor


class StopTrial(Exception):
    """Raised from a trial's epoch report when early stopping says the trial should stop."""


def run_in_process(driver: SearchDriver, *, n_trials: int, timeout_s: float | None = None) -> None:
    """Run ``n_trials`` more trials of the driver's study; no new trial starts after ``timeout_s``."""
    settings = TrialSettings.for_run(driver.space, Path(driver.run_dir))
    start = time.perf_counter()
    for _ in range(n_trials):
        if (timeout_s is not None and time.perf_counter() - start >= timeout_s) or driver.halted is not None:
            return
        number, payload = driver.ask()

        def report(row: dict, number: int = number) -> None:
            if driver.report(number, int(row.get("epoch", 0)), row):
                raise StopTrial

        try:
            metrics = execute(payload, settings, report=report)
        except StopTrial:
            driver.prune(number)
        except Exception as err:  # noqa: BLE001 - a failing trial is recorded and the search goes on
            driver.fail(number, err, traceback="".join(traceback.format_exception(err)))
        else:
            driver.complete(number, metrics)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@register_executor("optuna")
class InProcessExecutor(Executor):
    """Trials one at a time in this process; the data checked before the first trial are theirs."""

    in_process = True

    def prepare(self, say: Callable[[str], None]) -> None:
        """A trial runs here: it cannot have more CPUs or GPUs than this machine gives this process."""
        cpus, gpus = self.space.search.cpus_per_trial, self.space.search.gpus_per_trial
        gpus_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > 0 and gpus_here == 0:
            raise UserError(f"search.resources.gpu={gpus:g}, but torch sees no CUDA device here")
        if cpus > usable_cpus():
            raise UserError(f"search.resources.cpu={cpus:g} per trial (or --cpus-per-trial), but this machine has "
                            f"{usable_cpus()} CPUs for this process")
        if gpus > gpus_here:
            raise UserError(f"search.resources.gpu={gpus:g} per trial (or --gpus-per-trial), but torch sees {gpus_here} "
                            "GPUs here")
        if self.space.search.max_concurrent > 1:
            say(f"note: the {self.name} backend runs one trial at a time; max_concurrent applies to the ray backend")

    def run(self, driver: SearchDriver, *, n_trials: int, session: str) -> None:
        run_in_process(driver, n_trials=n_trials, timeout_s=self.space.search.timeout_s)
