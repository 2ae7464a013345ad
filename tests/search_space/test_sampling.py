"""Sampling configs from a space: valid, complete, conditional, JSON-able and seed-deterministic."""

from __future__ import annotations

import json
from pathlib import Path

from search_space.build import build_model
from search_space.k_rules import K_RULE_PARAMS, rule_keys
from search_space.sampling import sample_configs
from search_space.spec import TRAINING_PARAMS, load_space
from search_space.strategies import get_strategy

TRAINING_KEYS = set(TRAINING_PARAMS)
CELLS = Path(__file__).resolve().parents[2] / "search_space" / "cells.yaml"


def test_200_configs_valid_cover_every_strategy_and_repeat_with_seed():
    space = load_space(CELLS)
    configs = sample_configs(space, 200)
    assert {c["strategy"] for c in configs} == set(space.model.strategy_names)
    for config in configs:
        json.dumps(config)  # JSON-serialisable
        info = get_strategy(config["strategy"])
        accepted = {**info.params, **(K_RULE_PARAMS if info.uses_k_rule else {})}
        expected = set(info.params) | ({"k_rule", *rule_keys(config["k_rule"])} if info.uses_k_rule else set())
        assert set(config) - TRAINING_KEYS - {"strategy"} == expected, config
        for key in expected:
            assert accepted[key].check(config[key]) is None, (key, config[key])
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


def test_k_rule_keys_are_conditional_on_the_rule(tmp_path):
    import optuna

    from search_space.sampling import suggest_config

    text = CELLS.read_text().replace("k_rule: [fixed, loss_trend, top_p]",
                                      "k_rule: [fixed, top_p]\n      k_top_p: {float: [0.6, 0.9]}")
    assert "k_top_p: {float" in text
    space_file = tmp_path / "cells.yaml"
    space_file.write_text(text)
    space = load_space(space_file)
    study = optuna.create_study(directions=space.directions, sampler=optuna.samplers.RandomSampler(seed=1))
    rules = set()
    for _ in range(60):
        trial = study.ask()
        config = suggest_config(trial, space)
        if config["strategy"] == "sparse_topk":
            rules.add(config["k_rule"])
            assert ("sparse_topk.k_top_p" in trial.params) == (config["k_rule"] == "top_p")
            assert ("k_top_p" in config) == (config["k_rule"] == "top_p")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert rules == {"fixed", "top_p"}


def test_listed_embed_dims_are_never_changed_and_ranges_stay_in_range(tmp_path):
    """num_heads from a range with listed embed_dims: every config holds a listed embed_dim; an
    embed_dim range is rounded to a multiple of num_heads inside it."""
    path = tmp_path / "heads.yaml"
    path.write_text(
        "objectives: {accuracy: maximize, flops: minimize}\n"
        "space:\n  strategy:\n"
        "    dense_vit: {embed_dim: [48, 96], num_heads: {int: [2, 4]}, depth: 1}\n"
        "    sparse_topk: {embed_dim: {int: [33, 41]}, num_heads: [4, 8], depth: 1}\n"
    )
    configs = sample_configs(load_space(path), 60)
    for config in configs:
        assert config["embed_dim"] % config["num_heads"] == 0, config
        if config["strategy"] == "dense_vit":
            assert config["embed_dim"] in (48, 96), config
        else:
            assert 33 <= config["embed_dim"] <= 41, config
    assert {c["strategy"] for c in configs} == {"dense_vit", "sparse_topk"}
