"""Sampling configs from a space: valid, complete, conditional, JSON-able and seed-deterministic."""

from __future__ import annotations

import json
from pathlib import Path

from search_space.build import build_model
from search_space.k_rules import K_RULE_PARAMS
from search_space.sampling import sample_configs
from search_space.spec import load_space
from search_space.strategies import get_strategy

CELLS = Path(__file__).resolve().parents[2] / "search_space" / "cells.yaml"


def test_200_configs_valid_cover_every_strategy_and_repeat_with_seed():
    space = load_space(CELLS)
    configs = sample_configs(space, 200)
    assert {c["strategy"] for c in configs} == set(space.model.strategy_names)
    for config in configs:
        json.dumps(config)  # JSON-serialisable
        info = get_strategy(config["strategy"])
        accepted = {**info.params, **(K_RULE_PARAMS if info.uses_k_rule else {})}
        for key, spec in accepted.items():
            assert key in config, (key, config)
            assert spec.check(config[key]) is None, (key, config[key])
        if "num_heads" in config:
            assert config["embed_dim"] % config["num_heads"] == 0
    assert sample_configs(space, 200) == configs
    assert sample_configs(space, 50, seed=123) != configs[:50]


def test_conditional_parameters_only_for_the_chosen_strategy():
    import optuna

    space = load_space(CELLS)
    study = optuna.create_study(directions=space.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    from search_space.sampling import suggest_config

    for _ in range(40):
        trial = study.ask()
        config = suggest_config(trial, space)
        for name in trial.params:
            if "." in name:
                assert name.split(".")[0] == config["strategy"], (name, config["strategy"])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def test_sampled_configs_build(tmp_path):
    space = load_space(CELLS)
    for config in sample_configs(space, 10, seed=5):
        model = build_model(config, 3, 5, 28)
        assert model is not None
