"""The driver's side of a trial before it runs: sample a config define-by-run, check its budgets on
the model as built, and hand the trial its payload.

Optuna only (never torch training or Ray): what ``SearchDriver.ask`` and ``--dry-run`` call."""

from __future__ import annotations

from typing import Any

import optuna
import torch

from cellsparse import rundir
from cellsparse.objective_info import objective_info
from objectives import measure_objective
from runner.engine.datasets import data_shape
from runner.engine.deploy import use_space_deployment
from runner.engine.trial import check_batch
from search_space.build import build_model
from search_space.sampling import make_sampler, suggest_config
from search_space.spec import SearchSpace

#: The key under which the define-by-run function hands the clean config and trial number to the
#: trial (Ray merges the returned dict into its own config, next to Optuna's parameter names).
PAYLOAD_KEY = "_cellsparse"


def check_costs(config: dict[str, Any], space: SearchSpace) -> dict[str, float]:
    """Constraint values (<= 0 feasible) of ``config`` as built, before any training.

    Each bounded objective is measured by its own measure function (the one the trial reports) at
    the k the model is built with, the largest k its rule starts from, on ``runner.engine.trial.check_batch``
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


def record_constraints(trial: optuna.Trial, constraints: dict[str, float]) -> None:
    """Store each budget's constraint value (<= 0 is feasible, keyed ``max_<objective>``) where the
    samplers and ``study.best_trials`` read it (``trial.set_constraint``, Optuna's public API), and the
    same values as the user attribute ``constraints``, which optuna-dashboard shows with each trial
    (it reads only Optuna's older list form, which no public API writes)."""
    named = {objective_info(name).constraint_key or name: float(value) for name, value in constraints.items()}
    for key, value in named.items():
        trial.set_constraint(key, value)
    trial.set_user_attr(rundir.ATTR_CONSTRAINTS, named)


def sampler_for_session(space: SearchSpace, study_trials: int) -> optuna.samplers.BaseSampler:
    """The space's seeded sampler; a resumed session offsets the seed by the trials already asked,
    so its random start-up draws do not repeat the configs of the first session."""
    if study_trials == 0:
        return make_sampler(space)
    base = space.search.sampler_seed if space.search.sampler_seed is not None else space.seed
    return make_sampler(space, seed=base + study_trials)

