"""build_model / default_config: name resolution, defaults, pass-through keys, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch

from cellsparse.errors import UserError
from search_space.build import build_model, complete_config, default_config
from search_space.k_rules import k_rule_defaults
from search_space.strategies import get_strategy, strategy_names


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_my_strategies_are_registered_in_order() -> None:
    names = strategy_names()
    mine = [n for n in names if n in ("sparse_topk", "dense_cnn", "dense_vit")]
    assert mine == ["sparse_topk", "dense_cnn", "dense_vit"]
    assert not get_strategy("dense_cnn").sparse and not get_strategy("dense_cnn").uses_k_rule
    assert not get_strategy("dense_vit").sparse and not get_strategy("dense_vit").uses_k_rule
    assert get_strategy("sparse_topk").sparse and get_strategy("sparse_topk").uses_k_rule


def test_every_built_in_strategy_is_declared_torch_free() -> None:
    """The run directory and the report read sparse-or-dense from cellsparse.strategy_info alone."""
    import subprocess
    import sys

    code = "from cellsparse.strategy_info import declared_strategies; print(','.join(declared_strategies()))"
    declared = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    built_in = [n for n in strategy_names() if get_strategy(n).model.__module__.startswith("search_space.")]
    assert sorted(declared.split(",")) == sorted(built_in)


def test_a_built_in_strategy_cannot_be_registered_as_the_other_kind() -> None:
    from search_space.strategies import ParamSpec, register_strategy

    with pytest.raises(ValueError, match="declared dense"):
        register_strategy("dense_cnn", params={"depth": ParamSpec("int", 1, 4, default=2)}, sparse=True)


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UserError) as err:
        build_model({"strategy": "sparse_topkk"}, 3, 4, 28)
    message = str(err.value)
    assert "sparse_topkk" in message
    assert all(name in message for name in strategy_names())
    with pytest.raises(UserError, match="dense_vit"):
        default_config("nope")


def test_missing_strategy_key() -> None:
    with pytest.raises(UserError, match="strategy"):
        build_model({"embed_dim": 64}, 3, 4, 28)


@pytest.mark.parametrize("name", strategy_names())
def test_default_config_round_trips_through_json_and_builds(name: str) -> None:
    config = default_config(name)
    assert config["strategy"] == name
    info = get_strategy(name)
    assert set(config) == {"strategy", *info.params, *(k_rule_defaults() if info.uses_k_rule else {})}
    restored = json.loads(json.dumps(config))
    assert restored == config
    model = build_model(restored, 3, 4, 28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize("name", strategy_names())
def test_same_config_and_seed_give_identical_weights(name: str) -> None:
    torch.manual_seed(123)
    a = build_model(default_config(name), 1, 3, 32)
    torch.manual_seed(123)
    b = build_model(default_config(name), 1, 3, 32)
    torch.manual_seed(124)
    c = build_model(default_config(name), 1, 3, 32)
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_missing_keys_take_defaults_and_extra_keys_pass_through() -> None:
    extra = {"lr": 1e-3, "epochs": 5, "batch_size": 64, "k_rule": "top_p", "k_top_p": 0.7}
    full = complete_config({"strategy": "dense_cnn", "width": 8, **extra})
    assert full == {**default_config("dense_cnn"), "width": 8, **extra}

    torch.manual_seed(0)
    plain = build_model({"strategy": "dense_cnn", "width": 8}, 3, 4, 28)
    torch.manual_seed(0)
    with_extra = build_model({"strategy": "dense_cnn", "width": 8, **extra}, 3, 4, 28)
    assert same_weights(plain, with_extra)


def test_k_rule_keys_reach_the_model() -> None:
    """Keys the strategy does not declare are handed to the factory: sparse_topk reads k_rule."""
    model = build_model({"strategy": "sparse_topk", "k_rule": "top_p", "k_top_p": 0.6, "lr": 0.1}, 1, 2, 16)
    assert model.k_rule == "top_p" and model.k_rule_config["k_top_p"] == 0.6
    assert "lr" not in model.k_rule_config


def test_bad_values_name_the_key() -> None:
    with pytest.raises(UserError, match="embed_dim"):
        build_model({"strategy": "dense_vit", "embed_dim": 4}, 3, 4, 28)
    with pytest.raises(UserError, match="pixel_embedding"):
        build_model({"strategy": "sparse_topk", "pixel_embedding": "word2vec"}, 3, 4, 28)
    with pytest.raises(UserError, match="num_heads"):
        build_model({"strategy": "dense_vit", "embed_dim": 30, "num_heads": 4}, 3, 4, 28)


def test_json_floats_for_int_keys_are_accepted() -> None:
    """JSON writers may turn 64 into 64.0; the rebuilt network is the same."""
    config = {**default_config("dense_vit"), "embed_dim": 32.0, "depth": 1.0}
    full = complete_config(config)
    assert full["embed_dim"] == 32 and isinstance(full["embed_dim"], int)
    model = build_model(config, 3, 4, 28)
    assert model.embed_dim == 32
    with pytest.raises(UserError, match="embed_dim"):
        build_model({**config, "embed_dim": 32.5}, 3, 4, 28)


@pytest.mark.parametrize("name", ["sparse_topk", "tnet_traversal", "span_pyramid"])
def test_k_is_saved_with_the_weights(name):
    """A state_dict carries the model's k, so loading it rebuilds the network at the trained k."""
    trained = build_model(default_config(name), 3, 4, 32)
    low, _ = trained.k_bounds()
    trained.set_k(low)
    fresh = build_model(default_config(name), 3, 4, 32)
    assert fresh.k != low
    fresh.load_state_dict(trained.state_dict(), strict=True)
    assert fresh.k == low


def test_weights_saved_without_k_still_load():
    """Weights written before k joined the state_dict load strictly, at the built k."""
    model = build_model(default_config("sparse_topk"), 3, 4, 32)
    state = {key: value for key, value in model.state_dict().items() if key != "k_value"}
    other = build_model(default_config("sparse_topk"), 3, 4, 32)
    other.load_state_dict(state, strict=True)
    assert other.k == model.k


def test_registration_rejects_a_key_the_constructor_does_not_take():
    from search_space.strategies import ParamSpec, register_strategy

    class Tiny(torch.nn.Module):
        def __init__(self, *, in_channels: int, width: int) -> None:
            super().__init__()

    with pytest.raises(ValueError, match="takes no keyword"):
        register_strategy("tiny_bad", params={"depth": ParamSpec("int", 1, 4, default=2)})(Tiny)
