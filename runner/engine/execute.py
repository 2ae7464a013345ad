"""The trial side: what a trial process runs for one payload, whatever executor placed it there.

Life of one trial::

    payload = ConfigSampler(space)(optuna_trial)   # driver (runner.engine.sampler): sample, build, check budgets
    metrics = execute(payload, settings, report)    # trial process: train and measure (or not, if infeasible)
    values = objective_values(metrics, names)       # driver: tell Optuna, with trial_attrs(metrics)

No Ray and no Optuna here: an executor calls ``execute`` in its own process or in a worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cellsparse import rundir
from cellsparse.objective_info import declared_objectives, objective_extras
from runner.engine.datasets import cached_dataset, data_shape
from runner.engine.deploy import use_space_deployment
from runner.engine.plugins import import_plugins, plugin_modules
from runner.engine.trial import record_infeasible, run_trial
from search_space.spec import SearchSpace


class TrialError(RuntimeError):
    """A trial could not produce finite objective values; the backend records it as FAILED."""


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial process needs besides its payload. Small and picklable (sent to Ray workers)."""

    space: SearchSpace
    run_dir: str  # absolute: Ray workers run in other working directories
    threads: int
    use_gpu: bool
    plugins: tuple[str, ...] = ()

    @classmethod
    def for_run(cls, space: SearchSpace, run_dir: Path) -> TrialSettings:
        return cls(
            space=space.with_absolute_data_path(),
            run_dir=str(Path(run_dir).resolve()),
            threads=max(1, int(space.search.cpus_per_trial)),
            use_gpu=space.search.gpus_per_trial > 0,
            plugins=plugin_modules(),
        )


def _device(settings: TrialSettings) -> str:
    return "cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu"


def execute(payload: dict[str, Any], settings: TrialSettings, report: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Run one trial from its payload: train and measure, or only measure an over-budget config.

    Returns the metrics with ``duration_s`` (the trial's own time) added. Raises on failure (a
    build error, a diverged loss, a non-finite objective); the backend records FAIL.
    """
    import_plugins(settings.plugins)
    start = time.perf_counter()
    space = settings.space
    use_space_deployment(space, _device(settings), Path(settings.run_dir))
    number = int(payload["number"])
    config = payload["config"]
    directory = rundir.trial_dir(Path(settings.run_dir), number)
    if payload.get("build_error"):
        raise TrialError(payload["build_error"])
    if payload.get("feasible", True):
        metrics = run_trial(
            config,
            data=cached_dataset(space),
            trial_dir=directory,
            objectives=space.objective_names,
            augment=space.data.augment,
            device=_device(settings),
            threads=settings.threads,
            seed=space.seed + number,
            report=report,
        )
    else:
        in_channels, num_classes, size = data_shape(space)
        metrics = record_infeasible(
            config,
            shape=(in_channels, size, size),
            num_classes=num_classes,
            trial_dir=directory,
            objectives=space.objective_names,
            constraints=payload.get("constraints", {}),
        )
    metrics["duration_s"] = time.perf_counter() - start
    objective_values(metrics, space.objective_names)  # raises when one is not finite
    return metrics


def objective_values(metrics: dict[str, Any], names: Sequence[str]) -> list[float]:
    """The objective values in the study's order; TrialError when one is missing or not finite."""
    values = []
    for name in names:
        value = metrics.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrialError(f"objective {name!r} is {value!r}, not a finite number")
        values.append(float(value))
    return values


def trial_attrs(metrics: dict[str, Any]) -> dict[str, Any]:
    """The extra figures stored on the Optuna trial (trials.csv is rebuilt from them)."""
    return {
        rundir.ATTR_TEST_ACCURACY: metrics.get("test_accuracy"),
        rundir.ATTR_K_FINAL: metrics.get("k_final"),
        rundir.ATTR_PARAMS: metrics.get("params_count"),
        rundir.ATTR_DURATION: metrics.get("duration_s"),
        **{extra: metrics[extra] for extra in objective_extras(declared_objectives()) if extra in metrics},
    }

