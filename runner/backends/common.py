"""What both backends share: the define-by-run sampler (with the cost constraints), the per-trial
entry point a trial process runs, the user attributes kept per trial, and the progress lines.

Life of one trial, in either backend::

    payload = ConfigSampler(space)(optuna_trial)   # driver: sample, build, check budgets (<1 s)
    metrics = execute(payload, settings, report)    # trial process: train and measure (or not, if infeasible)
    values = objective_values(metrics, names)       # driver: tell Optuna, with trial_attrs(metrics)
    on_finished(study, number)                      # driver: rewrite trials.csv, print one line

Ray is not imported here; Optuna only for the sampler side (never inside ``execute``).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from cellsparse import rundir
from cellsparse.objective_info import declared_objectives, format_figure, objective_extras, objective_info
from objectives import measure_objective
from runner.data import describe_dataset, load_dataset
from runner.deploy import use_space_deployment
from runner.progress import Progress
from runner.trial import check_batch, record_infeasible, run_trial
from search_space.build import build_model
from search_space.errors import UserError
from search_space.sampling import make_sampler, suggest_config
from search_space.spec import SearchSpace

#: Comma-separated modules imported before anything is built, in the driver and in every trial
#: process: how a strategy (or objective) defined outside this package gets registered everywhere.
PLUGINS_ENV = "CELLSPARSE_PLUGINS"
#: The key under which the define-by-run function hands the clean config and trial number to the
#: trial (Ray merges the returned dict into its own config, next to Optuna's parameter names).
PAYLOAD_KEY = "_cellsparse"


class TrialError(RuntimeError):
    """A trial could not produce finite objective values; the backend records it as FAILED."""


def plugin_modules() -> tuple[str, ...]:
    raw = os.environ.get(PLUGINS_ENV, "")
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def import_plugins(modules: Sequence[str]) -> None:
    """Import each module (they register strategies or objectives); UserError naming the module for one
    that is not a module name (``..evil``, ``a/b``: only absolute dotted names are imported), cannot be
    found, or fails while it is imported (its own error, first line)."""
    for name in modules:
        if not all(part.isidentifier() for part in name.split(".")):
            raise UserError(f"{PLUGINS_ENV}: {name!r} is not a module name; expected comma-separated absolute "
                            "module names such as mypackage.strategies")
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"{PLUGINS_ENV}: cannot import plugin module {name!r} ({err})") from None
        except Exception as err:  # noqa: BLE001 - a broken plugin is the user's code: one line, not our traceback
            raise UserError(f"{PLUGINS_ENV}: plugin module {name!r} failed while being imported "
                            f"({describe_error(err)})") from None


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


# ---------------------------------------------------------------------------------------------
# Data, loaded once per process


_DATA: dict[tuple, Any] = {}


def _data_key(space: SearchSpace) -> tuple:
    kwargs = space.data.loader_kwargs()
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())) + (("seed", space.seed),)


def cached_dataset(space: SearchSpace) -> Any:
    """The space's dataset, loaded once per process (in-process backends would otherwise regenerate it)."""
    key = _data_key(space)
    if key not in _DATA:
        _DATA.clear()  # one dataset per process is enough; keep memory flat
        _DATA[key] = load_dataset(**space.data.loader_kwargs(), seed=space.seed)
    return _DATA[key]


_SHAPES: dict[tuple, tuple[int, int, int]] = {}


def with_data_size(space: SearchSpace) -> SearchSpace:
    """The space with ``data.image_size`` known: where the space file leaves it out (npz and folder
    data), the images' own side, read from the data as the loaders read it (array headers, image
    headers; non-square or mixed sizes are an error asking for image_size)."""
    if space.data.image_size is not None:
        return space
    return space.with_image_size(data_shape(space)[2])


def data_shape(space: SearchSpace) -> tuple[int, int, int]:
    """(in_channels, num_classes, image_size) without loading images."""
    key = _data_key(space)
    if key not in _SHAPES:
        _SHAPES[key] = tuple(describe_dataset(**space.data.loader_kwargs(), seed=space.seed))
    return _SHAPES[key]


# ---------------------------------------------------------------------------------------------
# Sampling side (driver)


def check_costs(config: dict[str, Any], space: SearchSpace) -> dict[str, float]:
    """Constraint values (<= 0 feasible) of ``config`` as built, before any training.

    Each bounded objective is measured by its own measure function (the one the trial reports) at
    the k the model is built with, the largest k its rule starts from, on ``runner.trial.check_batch``
    (the batch an infeasible trial's costs are recorded on), with the threads a trial gets. Only the
    constraints the space sets appear.
    """
    limits = space.constraints.limits
    if not limits:
        return {}
    in_channels, num_classes, size = data_shape(space)
    model = build_model(config, in_channels, num_classes, size)
    model.eval()
    images = check_batch(in_channels, size)
    threads = torch.get_num_threads()  # timed costs see a trial's threads, whatever the driver was left with
    torch.set_num_threads(max(1, int(space.search.cpus_per_trial)))
    use_space_deployment(space)  # throughput on the runtime its trials are timed on
    try:
        return {name: objective_info(name).excess(measure_objective(name, model, images)[name], limit)
                for name, limit in limits.items()}
    finally:
        torch.set_num_threads(threads)


class ConfigSampler:
    """The define-by-run function: sample a config, check its budgets, hand the trial its payload.

    Picklable (Ray saves it with the searcher). Stores the full config and the strategy as user
    attributes and every budget as an Optuna constraint (``record_constraints``; <= 0 is feasible),
    so samplers learn the feasible region and ``study.best_trials`` holds feasible trials only.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        config = suggest_config(trial, self.space)
        trial.set_user_attr(rundir.ATTR_CONFIG, config)
        trial.set_user_attr(rundir.ATTR_STRATEGY, config["strategy"])
        build_error = None
        try:
            constraints = check_costs(config, self.space)
        except Exception as err:  # noqa: BLE001 - the trial fails; the search must go on
            build_error = f"cannot build the sampled config: {type(err).__name__}: {err}"
            constraints = {}
        if constraints:
            record_constraints(trial, constraints)
        feasible = all(v <= 0 for v in constraints.values())
        payload = {
            "number": trial.number,
            "config": config,
            "feasible": feasible,
            "constraints": constraints,
            "build_error": build_error,
        }
        return {PAYLOAD_KEY: payload}


# ---------------------------------------------------------------------------------------------
# Trial side (any process)


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
    use_space_deployment(space, _device(settings))
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


def describe_error(err: BaseException) -> str:
    """One line for trials.csv: the exception type and its first message line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Study and progress (driver)


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


def sampler_for_session(space: SearchSpace, study_trials: int) -> optuna.samplers.BaseSampler:
    """The space's seeded sampler; a resumed session offsets the seed by the trials already asked,
    so its random start-up draws do not repeat the configs of the first session."""
    if study_trials == 0:
        return make_sampler(space)
    base = space.search.sampler_seed if space.search.sampler_seed is not None else space.seed
    return make_sampler(space, seed=base + study_trials)


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


def pareto_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The feasible Pareto front, by trial number (``best_trials`` is constraint-aware in Optuna 5)."""
    try:
        return sorted(study.best_trials, key=lambda t: t.number)
    except (ValueError, RuntimeError):
        return []


# ---------------------------------------------------------------------------------------------
# What optuna-dashboard reads


def name_metrics(study: optuna.Study, names: Sequence[str]) -> None:
    """Name the objectives in the study (optuna-dashboard and ``study.metric_names`` show them)."""
    if study.metric_names != list(names):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, unchanged through 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(names))


def record_constraints(trial: optuna.Trial, constraints: dict[str, float]) -> None:
    """Store each budget's constraint value (<= 0 is feasible, keyed ``max_<objective>``) where the
    samplers and ``study.best_trials`` read it (``trial.set_constraint``, Optuna's public API), and the
    same values as the user attribute ``constraints``, which optuna-dashboard shows with each trial
    (it reads only Optuna's older list form, which no public API writes)."""
    named = {objective_info(name).constraint_key or name: float(value) for name, value in constraints.items()}
    for key, value in named.items():
        trial.set_constraint(key, value)
    trial.set_user_attr(rundir.ATTR_CONSTRAINTS, named)
