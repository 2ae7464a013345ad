"""input_size: the resized model is the network built at input_size behind an area resize (same
numbers, same FLOPs plus the resize's); full resolution builds exactly the old network; the key is
validated with one-line errors, sampled when the space sets it, and delegates the k interface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from cellsparse.errors import UserError
from objectives import count_flops, counted_flops
from search_space.build import ResizedInput, build_model, default_config
from search_space.errors import SpecError
from search_space.resolution import INPUT_PARAMS, resolution_of
from search_space.sampling import sample_configs, suggest_config
from search_space.spec import load_space
from search_space.strategies import strategy_names
from search_space.strategies.blocks import conv2d_flops, linear_flops

# Small, fixed-k settings per strategy so the counter and the hand formulas agree and tests stay quick.
SMALL = {
    "sparse_topk": {"embed_dim": 16, "num_heads": 2, "depth": 1, "coarse_channels": 4, "k_rule": "fixed"},
    "tnet_traversal": {"width": 4, "embed_dim": 16, "base_resolution": 8, "k_rule": "fixed"},
    "span_pyramid": {"embed_dim": 16, "num_heads": 2, "depth": 1, "k_rule": "fixed"},
    "dense_cnn": {"width": 4, "stages": 2},
    "dense_vit": {"embed_dim": 16, "num_heads": 2, "depth": 1},
}
STRATEGIES = [n for n in strategy_names() if n in SMALL]


def config_of(strategy: str, **extra: object) -> dict:
    return {**default_config(strategy), **SMALL[strategy], **extra}


def seeded(config: dict, image_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config, 3, 5, image_size).eval()


def frames(side: int, n: int = 4) -> torch.Tensor:
    # smooth blobs, not noise: foreground/variance scores then rank patches the way they would on cells
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    centres = torch.rand(n, 2, generator=g) - 0.5
    r2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    blob = torch.exp(-r2 / 0.1)[:, None]  # (n, 1, side, side)
    return blob * torch.rand(n, 3, 1, 1, generator=g) + 0.05 * torch.randn(n, 3, side, side, generator=g)


# --------------------------------------------------------------------------------------------- cost and numbers


def dense_cnn_flops(side: int, *, width: int = 4, classes: int = 5) -> float:
    """width 4, two stages of one block, stem stride 1, on a side x side RGB image, by hand."""
    half = (side - 1) // 2 + 1
    return (
        conv2d_flops(side, side, 3, width, 3)  # stem
        + 2 * conv2d_flops(side, side, width, width, 3)  # stage 0 block
        + conv2d_flops(half, half, width, 2 * width, 3) + conv2d_flops(half, half, 2 * width, 2 * width, 3)
        + conv2d_flops(half, half, width, 2 * width, 1)  # stage 1 block and its projection
        + linear_flops(1, 2 * width, classes)
    )


def test_dense_cnn_at_32_inside_a_64_frame_costs_what_dense_cnn_at_32_costs() -> None:
    model = seeded(config_of("dense_cnn", input_size=32), 64)
    x = frames(64)
    assert isinstance(model, ResizedInput) and model.size == 32
    resize = 3 * 64 * 64  # area 64 -> 32: 1 FLOP per input element of each 2 x 2 window
    assert count_flops(model, x) == dense_cnn_flops(32) + resize
    assert counted_flops(model, x) == dense_cnn_flops(32) + resize  # the dispatcher's count with its formula
    assert dense_cnn_flops(32) < dense_cnn_flops(64) / 3.9


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resized_model_is_the_network_built_at_input_size(strategy: str) -> None:
    resized = seeded(config_of(strategy, input_size=12), 16)
    inner = seeded(config_of(strategy), 12)
    x = frames(16)
    small = F.interpolate(x, size=(12, 12), mode="area")
    with torch.no_grad():
        torch.testing.assert_close(resized(x), inner(small), rtol=0, atol=0)
    resize = 3 * 16 * 16  # area 16 -> 12: windows of 2 on each axis, 24 input rows and columns a channel
    assert count_flops(resized, x) == count_flops(inner, small) + 3 * 24 * 24
    assert counted_flops(resized, x) == counted_flops(inner, small) + 3 * 24 * 24
    assert resize < 3 * 24 * 24  # overlapping windows: more than one FLOP per input element
    assert sorted(resized.state_dict()) == sorted(f"inner.{k}" for k in inner.state_dict())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("full", [{}, {"input_size": None}, {"input_size": 16}, {"input_size": 16.0}])
def test_full_resolution_builds_exactly_the_old_network(strategy: str, full: dict) -> None:
    old = seeded(config_of(strategy), 16)
    new = seeded(config_of(strategy, **full), 16)
    assert type(new) is type(old) and not isinstance(new, ResizedInput)
    assert list(new.state_dict()) == list(old.state_dict())
    assert all(torch.equal(new.state_dict()[k], old.state_dict()[k]) for k in old.state_dict())
    x = frames(16)
    with torch.no_grad():
        assert torch.equal(new(x), old(x))
    assert count_flops(new, x) == count_flops(old, x)


def test_dense_cnn_default_at_28_px_keeps_its_pinned_cost() -> None:
    # the default dense_cnn on 28 px frames, as the code before input_size existed counted it (commit d50d45e)
    model = seeded(default_config("dense_cnn"), 28)
    assert count_flops(model, frames(28, 2)) == 19_142_784.0


# --------------------------------------------------------------------------------------------- the k interface


@pytest.mark.parametrize("strategy", ["sparse_topk", "span_pyramid", "tnet_traversal"])
def test_k_interface_is_the_inner_models(strategy: str) -> None:
    resized = seeded(config_of(strategy, input_size=12), 16)
    inner = resized.inner
    assert resized.k_bounds() == inner.k_bounds() and resized.k == inner.k
    low, high = resized.k_bounds()
    resized.set_k(low)
    assert inner.k == resized.k == low
    with pytest.raises(ValueError):
        resized.set_k(high + 1)
    if strategy != "tnet_traversal":  # TNet's k is its glimpse count: its bounds do not depend on size
        assert high == seeded(config_of(strategy), 12).k_bounds()[1]
    # k rides in the state_dict under the inner model's prefix and comes back on load
    state = resized.state_dict()
    assert int(state["inner.k_value"]) == low
    fresh = seeded(config_of(strategy, input_size=12), 16)
    fresh.load_state_dict(state)
    assert fresh.k == low


@pytest.mark.parametrize("strategy", ["sparse_topk", "span_pyramid", "tnet_traversal"])
def test_auxiliary_loss_is_the_inner_models_on_the_resized_frames(strategy: str) -> None:
    extra = {"keep_score": "learned"} if strategy == "span_pyramid" else {}
    resized = seeded(config_of(strategy, input_size=12, **extra), 16).train()
    inner = seeded(config_of(strategy, **extra), 12).train()
    x, targets = frames(16), torch.arange(4) % 5
    losses = []
    for model, images in ((resized, x), (inner, F.interpolate(x, size=(12, 12), mode="area"))):
        torch.manual_seed(3)  # training selection and negatives are random
        logits = model(images)
        losses.append(model.auxiliary_loss(logits, targets))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    assert losses[0].requires_grad and float(losses[0].detach().abs()) > 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_used_map_is_at_the_frame_size_and_scaled_by_the_resolution_seen(strategy: str) -> None:
    resized = seeded(config_of(strategy, input_size=8), 16)
    x = frames(16)
    with torch.no_grad():
        used = resized.used_map(x)
        inner = resized.inner.used_map(F.interpolate(x, size=(8, 8), mode="area"))
    assert used.shape == (4, 16, 16)
    expected = inner.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2) * 0.25  # each 8 px pixel covers 2 x 2
    torch.testing.assert_close(used, expected)
    assert float(used.max()) <= 0.25


# --------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (32, "at most the data's image_size 28"),
        (4, ">= 8"),
        (14.5, "an integer"),
        ("14", "an integer"),
        (True, "an integer"),
    ],
)
def test_bad_input_size_in_a_config_is_one_line_naming_the_key(value: object, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        build_model({"strategy": "dense_cnn", "input_size": value}, 3, 5, 28)
    message = str(err.value)
    assert "'input_size'" in message and fragment in message and "\n" not in message, message


BASE = {
    "data": {"source": "synthetic", "image_size": 28, "train": 64, "val": 32, "test": 32},
    "objectives": {"accuracy": "maximize", "flops": "minimize"},
    "search": {"sampler": {"name": "random", "seed": 0}, "backend": "optuna"},
    "space": {"strategy": {"sparse_topk": {}, "dense_cnn": {}}},
}


def space_file(tmp_path: Path, shared: dict | None = None, dense_cnn: dict | None = None) -> Path:
    data = json.loads(json.dumps(BASE))
    if shared is not None:
        data["space"]["shared"] = shared
    if dense_cnn is not None:
        data["space"]["strategy"]["dense_cnn"] = dense_cnn
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("where", "value", "key_path", "fragment"),
    [
        ("shared", 32, "space.shared.input_size", "expected at most the data's image_size 28"),
        ("shared", [None, 14, 64], "space.shared.input_size", "got 64"),
        ("shared", {"int": [8, 40]}, "space.shared.input_size", "at most the data's image_size 28"),
        ("shared", 4, "space.shared.input_size", ">= 8"),
        ("shared", {"int": [4, 20]}, "space.shared.input_size", "8 <= low"),
        ("dense_cnn", 14.5, "space.strategy.dense_cnn.input_size", "expected an integer"),
        ("dense_cnn", {"float": [8, 20]}, "space.strategy.dense_cnn.input_size", "integer range"),
        ("dense_cnn", "small", "space.strategy.dense_cnn.input_size", "expected an integer"),
        ("shared", [14, 14], "space.shared.input_size", "distinct choices"),
    ],
)
def test_bad_input_size_in_a_space_file_is_one_line(tmp_path: Path, where: str, value: object, key_path: str,
                                                    fragment: str) -> None:
    path = space_file(tmp_path, **({"shared": {"input_size": value}} if where == "shared" else
                                   {"dense_cnn": {"input_size": value}}))
    with pytest.raises(SpecError) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key_path}: "), message
    assert fragment in message and "\n" not in message, message


def test_input_size_typo_suggests_the_key(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="did you mean 'input_size'"):
        load_space(space_file(tmp_path, shared={"input_sise": 14}))


# --------------------------------------------------------------------------------------------- sampling


def test_shared_input_size_is_sampled_for_every_strategy_and_builds(tmp_path: Path) -> None:
    space = load_space(space_file(tmp_path, shared={"input_size": [None, 14, 20]}))
    configs = sample_configs(space, 40)
    assert {(c["strategy"], c["input_size"]) for c in configs} == {
        (s, v) for s in ("sparse_topk", "dense_cnn") for v in (None, 14, 20)}
    assert sample_configs(space, 40) == configs  # the same seed, the same draws
    for config in configs[:6]:
        json.dumps(config)
        model = build_model(config, 3, 5, 28)
        assert isinstance(model, ResizedInput) == (config["input_size"] is not None)
        assert resolution_of(config, 28) == (config["input_size"] or 28)
    assert load_space(tmp_path / "cells.yaml").to_dict()["space"]["shared"] == {"input_size": [None, 14, 20]}


def test_input_size_range_in_one_strategy_is_conditional(tmp_path: Path) -> None:
    import optuna

    space = load_space(space_file(tmp_path, dense_cnn={"input_size": {"int": [8, 28], "step": 4}}))
    study = optuna.create_study(directions=space.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(20):
        trial = study.ask()
        config = suggest_config(trial, space)
        seen.setdefault(config["strategy"], []).append(config.get("input_size"))
        assert ("dense_cnn.input_size" in trial.params) == (config["strategy"] == "dense_cnn")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert set(seen) == {"sparse_topk", "dense_cnn"}
    assert all(v is None for v in seen["sparse_topk"])  # not in its config at all: the data's size
    assert set(seen["dense_cnn"]) <= {8, 12, 16, 20, 24, 28} and len(set(seen["dense_cnn"])) > 1


def test_spaces_without_input_size_give_configs_without_it(tmp_path: Path) -> None:
    configs = sample_configs(load_space(space_file(tmp_path)), 10)
    assert all("input_size" not in c for c in configs)


def test_the_declaration_accepts_null_and_names_it() -> None:
    spec = INPUT_PARAMS["input_size"]
    assert spec.check(None) is None and spec.cast(None) is None and spec.cast(20.0) == 20
    assert spec.check(7) is not None and "or null" in spec.check(7)
