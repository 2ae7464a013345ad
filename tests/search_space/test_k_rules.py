"""k-adaptation rules driven by scripted loss sequences, and the per-image helpers."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch

from search_space.errors import UserError
from search_space.k_rules import (
    K_RULE_DEFAULTS,
    K_RULE_PARAMS,
    PER_IMAGE_RULES,
    KRule,
    k_rule_names,
    make_k_rule,
    per_image_k,
    ratio_loss,
)

K_INIT, BOUNDS, EPOCHS = 100, (8, 400), 30


def rule(name: str, epochs: int = EPOCHS, **overrides: object) -> KRule:
    return make_k_rule({**K_RULE_DEFAULTS, "k_rule": name, **overrides}, k_init=K_INIT, k_bounds=BOUNDS, epochs=epochs)


def run(r: KRule, losses: list[float], start: int = 0) -> list[int]:
    return [r.step(start + e, loss) for e, loss in enumerate(losses)]


FALLING = [0.9**e for e in range(EPOCHS)]


def test_params_and_defaults_agree() -> None:
    assert set(K_RULE_PARAMS) == set(K_RULE_DEFAULTS)
    for key, spec in K_RULE_PARAMS.items():
        assert spec.check(K_RULE_DEFAULTS[key]) is None, key
    assert list(K_RULE_PARAMS["k_rule"].choices) == k_rule_names()


@pytest.mark.parametrize("name", ["fixed", *PER_IMAGE_RULES])
def test_constant_rules_never_move(name: str) -> None:
    r = rule(name)
    wild = [1.0, 0.1, 5.0, 0.01, float("nan"), 3.0] * 5
    assert run(r, wild) == [K_INIT] * EPOCHS
    assert r.per_image == (name in PER_IMAGE_RULES)


def test_loss_trend_shrinks_on_falling_loss_to_its_floor() -> None:
    r = rule("loss_trend", k_min_fraction=0.3, k_patience=2, k_freeze_fraction=0.0)
    ks = run(r, FALLING)
    assert ks[:3] == [K_INIT] * 3  # needs two full windows of history first
    assert ks[3] < K_INIT
    assert all(b <= a for a, b in pairwise(ks))
    assert ks[-1] == 30  # k_min = 0.3 * 100


def test_loss_trend_grows_back_when_loss_rises_and_stays_in_bounds() -> None:
    r = rule("loss_trend", k_min_fraction=0.3, k_patience=2, k_freeze_fraction=0.0, k_step=0.2)
    ks = run(r, FALLING[:12])
    low = ks[-1]
    rising = [FALLING[11] * 1.2**e for e in range(1, 18)]
    ks_up = run(r, rising, start=12)
    assert ks_up[-1] > low
    assert all(b >= a for a, b in pairwise(ks_up))
    assert max(ks_up) <= BOUNDS[1]
    assert min(ks + ks_up) >= 30


def test_loss_trend_holds_on_a_plateau() -> None:
    r = rule("loss_trend", k_patience=2, k_freeze_fraction=0.0)
    assert run(r, [1.0] * 20) == [K_INIT] * 20


def test_loss_trend_reaches_the_model_upper_bound_and_no_further() -> None:
    r = make_k_rule(
        {**K_RULE_DEFAULTS, "k_rule": "loss_trend", "k_patience": 1, "k_freeze_fraction": 0.0, "k_step": 0.5},
        k_init=100,
        k_bounds=(8, 150),
        epochs=20,
    )
    ks = run(r, [1.5**e for e in range(20)])
    assert ks[-1] == 150 and max(ks) == 150


def test_loss_trend_is_frozen_for_the_final_epochs() -> None:
    r = rule("loss_trend", k_patience=1, k_freeze_fraction=0.2)  # 30 epochs: the last 6 frozen
    assert r.freeze_epoch == 24
    ks = run(r, [1.0] * 24 + [0.5**e for e in range(6)])  # would shrink hard if not frozen
    assert ks[-7:] == [K_INIT] * 7


def test_loss_trend_ignores_non_finite_losses() -> None:
    r = rule("loss_trend", k_patience=1, k_freeze_fraction=0.0)
    assert run(r, [1.0, float("nan"), 1.0, float("inf"), 1.0]) == [K_INIT] * 5


def test_schedule_is_monotone_and_hits_k_final_at_the_freeze() -> None:
    config = {**K_RULE_DEFAULTS, "k_rule": "schedule", "k_final_fraction": 0.25, "k_freeze_fraction": 0.2}
    r = make_k_rule(config, k_init=1000, k_bounds=(8, 4000), epochs=EPOCHS)
    assert r.k == 1000
    ks = run(r, [1.0] * EPOCHS)  # ks[e] is the k of epoch e + 1
    assert all(b < a for a, b in pairwise([1000, *ks[: r.freeze_epoch]]))
    assert r.freeze_epoch == 24
    assert ks[r.freeze_epoch - 2] > 250  # epoch 23 is still above k_final ...
    assert ks[r.freeze_epoch - 1 :] == [250] * (EPOCHS - r.freeze_epoch + 1)  # ... epoch 24 on are at it


def test_schedule_without_freeze_trains_the_last_epoch_at_k_final() -> None:
    r = rule("schedule", epochs=5, k_final_fraction=0.5, k_freeze_fraction=0.0)
    assert r.freeze_epoch == 4
    assert run(r, [1.0] * 4)[-1] == 50


def test_schedule_respects_the_model_lower_bound() -> None:
    r = make_k_rule({**K_RULE_DEFAULTS, "k_rule": "schedule", "k_final_fraction": 0.05}, k_init=100, k_bounds=(20, 400), epochs=5)
    assert r.k_final == 20


@pytest.mark.parametrize("name", k_rule_names())
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    losses = [0.9**e for e in range(12)] + [0.3 * 1.3**e for e in range(18)]
    settings = {"k_patience": 2, "k_step": 0.2}
    reference = run(rule(name, **settings), losses)
    first = rule(name, **settings)
    run(first, losses[:13])
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = rule(name, **settings)
    resumed.load_state_dict(state)
    assert resumed.k == reference[12]
    assert run(resumed, losses[13:], start=13) == reference[13:]


def test_state_of_another_rule_is_refused() -> None:
    with pytest.raises(UserError, match="loss_trend"):
        rule("schedule").load_state_dict(rule("loss_trend").state_dict())


def test_epochs_must_increase() -> None:
    r = rule("fixed")
    r.step(0, 1.0)
    with pytest.raises(ValueError, match="increase"):
        r.step(0, 1.0)


def test_unknown_rule_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="unknown k_rule 'shrinky'.*fixed, loss_trend, schedule, ratio, top_p"):
        rule("shrinky")


def test_out_of_range_setting_names_the_key() -> None:
    with pytest.raises(UserError, match=r"k_step=0\.9 must be a value >= 0\.01 and <= 0\.5"):
        rule("loss_trend", k_step=0.9)


def test_k_init_outside_bounds_is_an_error() -> None:
    with pytest.raises(UserError, match="outside"):
        make_k_rule({"k_rule": "fixed"}, k_init=5, k_bounds=(8, 400), epochs=3)


def test_per_image_k_top_p_on_hand_made_scores() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.05, 0.0, 0.0],  # 0.9 of the mass in one score
            [0.2, 0.2, 0.2, 0.2, 0.2],  # flat: 0.8 of the mass needs 4
            [0.1, 0.4, 0.0, 0.3, 0.2],  # unsorted: 0.4 + 0.3 + 0.2 >= 0.8
            [0.0, 0.0, 0.0, 0.0, 0.0],  # no mass: at least one
        ]
    )
    k = per_image_k(scores, rule="top_p", config={"k_top_p": 0.8}, k_max=5)
    assert k.dtype == torch.long
    assert k.tolist() == [1, 4, 3, 1]
    assert per_image_k(scores, rule="top_p", config={"k_top_p": 0.8}, k_max=2).tolist() == [1, 2, 2, 1]


def test_per_image_k_ratio_keeps_the_expected_count() -> None:
    scores = torch.tensor([[0.9, 0.6, 0.4, 0.51], [0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0], [0.3] * 4])
    # sums 2.41, 1.0, 4.0, 1.2: rounded, clamped to [1, 3]; probabilities all below 0.5 still keep one
    assert per_image_k(scores, rule="ratio", config={}, k_max=3).tolist() == [2, 1, 3, 1]


def test_per_image_k_refuses_an_epoch_rule() -> None:
    with pytest.raises(UserError, match="ratio, top_p"):
        per_image_k(torch.rand(2, 4), rule="schedule", config={}, k_max=4)


def test_ratio_loss_value_and_gradient() -> None:
    scores = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    loss = ratio_loss(scores, 0.5)  # image means 0.5 and 1.0 -> (0 + 0.25) / 2
    assert loss.item() == pytest.approx(0.125)
    loss.backward()
    # d/ds of ((mean_b - t)^2)/B = 2 (mean_b - t) / (N B): 0 for image 0, 2 * 0.5 / 8 for image 1
    assert torch.allclose(scores.grad, torch.tensor([[0.0] * 4, [0.125] * 4]))


def test_per_image_k_traces_under_torch_export() -> None:
    class Counter(torch.nn.Module):
        def forward(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return (
                per_image_k(scores, rule="top_p", config={"k_top_p": 0.7}, k_max=6),
                per_image_k(scores, rule="ratio", config={}, k_max=6),
            )

    exported = torch.export.export(Counter(), (torch.rand(3, 10),))
    fresh = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    for got, want in zip(exported.module()(fresh), Counter()(fresh), strict=True):
        assert torch.equal(got, want)


def test_per_image_k_respects_a_floor():
    scores = torch.full((2, 10), 0.1)  # an untrained scorer: no keep decision is on
    assert per_image_k(scores, rule="ratio", config={}, k_max=8, k_min=4).tolist() == [4, 4]
