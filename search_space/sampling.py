"""SearchSpace -> Optuna define-by-run sampling, and the seeded sampler the space asks for.

Parameter names seen by Optuna: ``strategy``; shared model keys and training keys by their own
name (one distribution across strategies, so samplers learn across them); keys from a strategy's
own block as ``<strategy>.<key>`` (conditional: sampled only when that strategy is chosen).
The returned config is flat and complete: the strategy's defaults, then every sampled or fixed
value. k-rule keys are conditional on the rule: ``k_rule`` is drawn first and only the keys that
rule reads are sampled and kept (a ``k_top_p`` range costs nothing in trials that chose
``schedule``). ``input_size`` (``search_space.resolution``), which every strategy takes, is sampled
like any other key when the space sets it and left out of the config when it does not.
"""

from __future__ import annotations

from typing import Any

import optuna

from search_space.k_rules import K_RULE_PARAMS, k_rule_defaults
from search_space.params import Param
from search_space.spec import SearchSpace, StrategySpace
from search_space.strategies import get_strategy


def _suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    if param.kind == "fixed":
        return param.value
    if param.kind == "choice":
        if len(param.choices) == 1:
            return param.choices[0]
        return trial.suggest_categorical(name, list(param.choices))
    if param.kind == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), step=param.step or 1)
    return trial.suggest_float(name, float(param.low), float(param.high), log=param.kind == "log")


def _strategy_space(space: SearchSpace, name: str) -> StrategySpace:
    for strategy in space.model.strategies:
        if strategy.name == name:
            return strategy
    raise KeyError(name)


def _ordered_keys(params: dict[str, Param]) -> list[str]:
    """num_heads before embed_dim, so embed_dim can be rounded to a multiple of it."""
    keys = list(params)
    if "num_heads" in keys and "embed_dim" in keys:
        keys.remove("num_heads")
        keys.insert(keys.index("embed_dim"), "num_heads")
    return keys


def suggest_config(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample one flat, JSON-serialisable config (define-by-run; call once per trial)."""
    names = space.model.strategy_names
    strategy = names[0] if len(names) == 1 else trial.suggest_categorical("strategy", names)
    chosen = _strategy_space(space, strategy)
    info = get_strategy(strategy)

    config: dict[str, Any] = {"strategy": strategy, **info.defaults}
    params = dict(chosen.params)

    def suggest(key: str) -> Any:
        optuna_name = f"{strategy}.{key}" if key in chosen.own else key
        return _suggest(trial, optuna_name, params.pop(key))

    if info.uses_k_rule:
        rule = suggest("k_rule") if "k_rule" in params else None
        config.update(k_rule_defaults(rule))
        for key in set(K_RULE_PARAMS) - set(config):
            params.pop(key, None)  # read by other rules only
    for key in _ordered_keys(params):
        config[key] = suggest(key)
    if "embed_dim" in config and "num_heads" in config and config["embed_dim"] % config["num_heads"]:
        # Only reachable with an int range for embed_dim (listed, fixed and default values are checked
        # when the file loads): the nearest multiple of num_heads inside that range, which the file
        # check guarantees exists.
        heads, dim = config["num_heads"], chosen.params["embed_dim"]
        low, high = int(dim.low), int(dim.high)
        config["embed_dim"] = min(max(round(config["embed_dim"] / heads) * heads, -(-low // heads) * heads),
                                  high // heads * heads)
    for key, param in space.training.items():
        config[key] = _suggest(trial, key, param)
    return config


def sample_configs(space: SearchSpace, n: int, *, seed: int | None = None) -> list[dict[str, Any]]:
    """Draw ``n`` configs with the space's sampler, without building or training them (tests and
    benchmarks that need the sampler's draws alone; ``--dry-run`` asks through the search's own
    ``ConfigSampler`` instead, which also builds each config and checks its budgets)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=space.directions,
        sampler=make_sampler(space, seed=seed),
    )
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(suggest_config(trial, space))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return configs


def make_sampler(space: SearchSpace, *, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler named in the space, seeded (``seed`` overrides the space's sampler seed).

    Samplers are always pinned explicitly: Optuna's defaults change between major versions.
    """
    settings = space.search
    seed = settings.sampler_seed if seed is None else seed
    options = dict(settings.sampler_options)
    factories = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "nsga3": optuna.samplers.NSGAIIISampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
    }
    return factories[settings.sampler](seed=seed, **options)
