"""The in-process backend: trials run one at a time in this process, asked for and told through the
search driver.

No Ray start-up, no worker processes: the quickest way to run a small search, to debug a strategy
(breakpoints work), and the reference for reproducibility (one seed gives the same trials and the
same numbers on CPU). A trial that raises is recorded FAIL with its error line (and its traceback in
``trials/<n>/error.txt``) and the search goes on; a trial early stopping cuts at a rung is PRUNED.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from runner.backends.common import TrialSettings, execute
from runner.driver import SearchDriver


class StopTrial(Exception):
    """Raised from a trial's epoch report when early stopping says the trial should stop."""


def run_optuna(driver: SearchDriver, *, n_trials: int, timeout_s: float | None = None) -> None:
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
