"""k-adaptation rules driven by scripted loss sequences, and the per-image helpers."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest
import torch

from cellsparse.errors import UserError
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


def rule(name: str, epochs: int = EPOCHS, steps_per_epoch: int = 1, **overrides: object) -> KRule:
    config = {**K_RULE_DEFAULTS, "k_rule": name, **overrides}
    return make_k_rule(config, k_init=K_INIT, k_bounds=BOUNDS, epochs=epochs, steps_per_epoch=steps_per_epoch)


def run(r: KRule, losses: list[float], start: int = 0, cost=None) -> list[int]:
    """Feed ``losses`` from step ``start``; when the rule asks for a probe, answer with losses
    ``cost(reference k)`` and ``cost(candidate k)`` (relative) above the batch's."""
    ks = []
    for i, loss in enumerate(losses):
        probe = r.probe(start + i)
        probed = None if probe is None or cost is None else tuple(loss * (1 + cost(k)) for k in probe)
        ks.append(r.update(start + i, loss, probed))
    return ks


def free(k: int) -> float:
    return 0.0


def cliff(k: int, at: int = 40) -> float:
    """A model that needs ``at`` pixels: fewer cost 10% more loss."""
    return 0.0 if k >= at else 0.1


FALLING = [0.9**e for e in range(EPOCHS)]
SPE = 32  # steps per epoch, as in the default synthetic data (2000 images, batch 64)


def noisy(levels: list[float], *, seed: int = 0, spread: float = 0.15) -> list[float]:
    """Batch losses around the given per-step levels, with a 64-image batch's spread (~15%)."""
    g = torch.Generator().manual_seed(seed)
    return [level * (1 + spread * float(torch.randn((), generator=g))) for level in levels]


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
    assert r.trace == []


def test_loss_trend_shrinks_while_smaller_k_is_free_down_to_its_floor() -> None:
    r = rule("loss_trend", k_min_fraction=0.3, k_decisions=1, k_freeze_fraction=0.0)
    assert r.probe(0) is None  # the first epoch only warms up
    ks = run(r, FALLING, cost=free)
    assert ks[0] == K_INIT
    assert ks[1] == 90  # then every decision with a free candidate shrinks by k_step
    assert all(b <= a for a, b in pairwise(ks))
    assert ks[-1] == 30  # k_min = 0.3 * 100
    assert [t["k"] for t in r.trace] == ks[1:-1]  # a decision after every epoch but the first and the frozen last
    assert r.probe(EPOCHS) is None  # frozen


def test_loss_trend_never_shrinks_without_probes_or_past_the_tolerance() -> None:
    assert run(rule("loss_trend", k_decisions=1), FALLING) == [K_INIT] * EPOCHS
    expensive = run(rule("loss_trend", k_decisions=1, k_tolerance=0.05), FALLING, cost=lambda k: 0.06 * (k < K_INIT))
    assert expensive == [K_INIT] * EPOCHS
    cheap = run(rule("loss_trend", k_decisions=1, k_tolerance=0.05), FALLING, cost=lambda k: 0.04 * (k < K_INIT))
    assert cheap[-1] < K_INIT


def test_loss_trend_settles_at_the_k_the_model_needs_within_the_budget() -> None:
    """A 10-epoch falling loss fed per batch with a batch's noise, and a model that needs 40 pixels:
    k moves several times within epochs, reaches 40 by epoch 3 and holds there."""
    levels = [0.3 + 1.0 * 0.5 ** (s / SPE) for s in range(10 * SPE)]
    r = rule("loss_trend", epochs=10, steps_per_epoch=SPE, k_decisions=4, k_min_fraction=0.1)
    ks = run(r, noisy(levels), cost=cliff)
    assert r.interval == 8 and len(r.trace) == 4 * 7 + 1  # from the end of epoch 0 to the freeze (epochs 8-9)
    assert ks[: SPE - 1] == [K_INIT] * (SPE - 1)
    assert len(set(ks[: 3 * SPE])) >= 5  # several moves within the first three epochs
    assert ks[3 * SPE :] == [40] * (7 * SPE)  # 100, 90, 81, 72, 64, 57, 51, 45, 40: 36 would cost 10%


def test_loss_trend_shrinks_share_one_loss_budget() -> None:
    """Every 10% shrink costs 1% more loss: each is within a 2% tolerance alone, but the rule stops
    once the shrinks together would cost more than 2% (100 -> 90 -> 81; 72 would make it 3%)."""
    r = rule("loss_trend", k_decisions=1, k_freeze_fraction=0.0, k_tolerance=0.02)
    ks = run(r, FALLING, cost=lambda k: 0.01 * round(math.log(K_INIT / k) / math.log(1 / 0.9)))
    assert ks[-1] == 81
    assert r.probe(5) == (81, 72)
    assert r.trace[-1]["spent"] == pytest.approx(0.0199, abs=1e-3)


def test_loss_trend_weighs_a_candidate_on_all_its_probes_not_its_luckiest() -> None:
    """A candidate that costs 10% on one decision's probes and looks free (-1%) on the next costs 4.5%
    on average: over a 3% budget it is never taken, however often the lucky batches come round."""
    r = rule("loss_trend", epochs=10, steps_per_epoch=8, k_decisions=4, k_tolerance=0.03, k_freeze_fraction=0.0)
    probes = 0
    for step in range(80):
        probe = r.probe(step)
        probed = None
        if probe is not None:
            cost = 0.1 if (probes // 2) % 2 == 0 else -0.01
            probed, probes = (1.0, 1.0 + cost), probes + 1
        r.update(step, 1.0, probed)
    assert probes > 20 and r.k == K_INIT
    assert all(point["probe_cost"] == pytest.approx(0.045) for point in r.trace[1::2])


def test_loss_trend_grows_back_when_the_loss_rises_beyond_noise() -> None:
    r = rule("loss_trend", epochs=10, steps_per_epoch=SPE, k_freeze_fraction=0.0, k_min_fraction=0.1)
    ks = run(r, noisy([1.0] * 3 * SPE), cost=free)
    low = ks[-1]
    assert low < 60
    jumped = run(r, noisy([1.5] * 2 * SPE, seed=1), start=3 * SPE, cost=free)
    assert max(jumped) > low  # the loss jumped by 50%: pixels given back
    assert all(b >= a for a, b in pairwise(jumped[: SPE // 4 + 1]))


def test_loss_trend_holds_on_a_noisy_plateau_when_shrinking_costs() -> None:
    for seed in range(3):
        r = rule("loss_trend", epochs=10, steps_per_epoch=SPE, k_freeze_fraction=0.0)
        assert run(r, noisy([1.0] * 10 * SPE, seed=seed), cost=lambda k: 0.1 * (k < K_INIT)) == [K_INIT] * 10 * SPE, seed


def test_loss_trend_reaches_the_model_upper_bound_and_no_further() -> None:
    r = make_k_rule(
        {**K_RULE_DEFAULTS, "k_rule": "loss_trend", "k_decisions": 1, "k_freeze_fraction": 0.0, "k_step": 0.5},
        k_init=100,
        k_bounds=(8, 150),
        epochs=20,
        steps_per_epoch=8,
    )
    ks = run(r, [1.5 ** (s / 8) for s in range(20 * 8)])
    assert ks[-1] == 150 and max(ks) == 150


def test_loss_trend_is_frozen_for_the_final_epochs() -> None:
    r = rule("loss_trend", k_decisions=1, k_freeze_fraction=0.2)  # 30 epochs: the last 6 frozen
    assert r.freeze_epoch == 24
    ks = run(r, [1.0] * 24 + [0.5**e for e in range(6)], cost=free)  # would shrink if not frozen
    assert ks[22:] == [ks[22]] * 8 and ks[22] < K_INIT


def test_loss_trend_ignores_non_finite_losses() -> None:
    r = rule("loss_trend", k_decisions=1, k_freeze_fraction=0.0)
    assert run(r, [1.0, float("nan"), 1.0, float("inf"), 1.0], cost=lambda k: float("nan")) == [K_INIT] * 5


def test_schedule_moves_only_at_epoch_ends() -> None:
    r = rule("schedule", epochs=4, steps_per_epoch=5, k_final_fraction=0.5, k_freeze_fraction=0.0)
    ks = run(r, [1.0] * 20)
    assert ks[:4] == [K_INIT] * 4 and ks[4] < K_INIT  # the k after step 4 is epoch 1's
    assert len(set(ks[4:9])) == 1 and ks[-1] == 50


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
    losses = noisy([1.0 + 0.9**s for s in range(4 * 15)] + [1.2 + 0.01 * s for s in range(4 * 15)])
    settings = {"k_decisions": 2, "k_step": 0.2, "steps_per_epoch": 4}
    reference_rule = rule(name, **settings)
    reference = run(reference_rule, losses, cost=cliff)
    assert name not in ("loss_trend", "schedule") or len(set(reference)) > 2  # the test exercises moves
    first = rule(name, **settings)
    run(first, losses[:53], cost=cliff)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = rule(name, **settings)
    resumed.load_state_dict(state)
    assert resumed.k == reference[52]
    assert run(resumed, losses[53:], start=53, cost=cliff) == reference[53:]
    assert resumed.trace == reference_rule.trace


def test_state_of_another_rule_is_refused() -> None:
    with pytest.raises(UserError, match="loss_trend"):
        rule("schedule").load_state_dict(rule("loss_trend").state_dict())


def test_steps_must_increase() -> None:
    r = rule("fixed")
    r.update(0, 1.0)
    with pytest.raises(ValueError, match="increase"):
        r.update(0, 1.0)


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
