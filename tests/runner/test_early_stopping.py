"""The successive-halving rule against a brute-force reference on synthetic rung tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cellsparse.pareto import to_losses
from runner.engine.early_stopping import EarlyStoppingConfig, SuccessiveHalving, rung_epochs, rung_order
from tests.cellsparse.test_pareto import brute_ranks


def report(rule: SuccessiveHalving, trial: str, epoch: int, values: list[float]) -> bool:
    """What the search driver does with each epoch's values: record them, then ask the rung."""
    return rule.record(trial, epoch, values) and rule.should_stop(trial, epoch)


def brute_crowding(losses: np.ndarray) -> list[float]:
    """NSGA-II crowding distance written out point by point."""
    n, m = losses.shape
    if n <= 2:
        return [math.inf] * n
    out = [0.0] * n
    for j in range(m):
        order = sorted(range(n), key=lambda i: (losses[i, j], i))
        span = losses[order[-1], j] - losses[order[0], j]
        for pos, i in enumerate(order):
            if pos in (0, n - 1):
                out[i] = math.inf
            elif span > 0 and out[i] != math.inf:
                out[i] += (losses[order[pos + 1], j] - losses[order[pos - 1], j]) / span
    return out


def brute_keep(values: np.ndarray, directions: list[str], eta: float, min_trials: int, multi: bool) -> list[bool]:
    """Which rows go on, by sorting (front, -crowding, arrival) or (first-objective loss, arrival) by hand."""
    n = len(values)
    if n < min_trials:
        return [True] * n
    losses = to_losses(values, directions)
    if multi:
        ranks = brute_ranks(values, directions)
        crowd = [0.0] * n
        for r in set(ranks):
            members = [i for i in range(n) if ranks[i] == r]
            for i, c in zip(members, brute_crowding(losses[members]), strict=True):
                crowd[i] = c
        key = sorted(range(n), key=lambda i: (ranks[i], -crowd[i], i))
    else:
        key = sorted(range(n), key=lambda i: (losses[i, 0], i))
    kept = set(key[: max(1, int(n // eta))])
    return [i in kept for i in range(n)]


def run_rung(values: np.ndarray, directions: list[str], *, eta: float, min_trials: int, multi: bool) -> list[bool]:
    """Feed the rows in arrival order to one rung (epoch 1) and ask, after the last, who goes on."""
    rule = SuccessiveHalving(EarlyStoppingConfig("moasha" if multi else "asha", 1, eta, min_trials),
                             directions=directions, max_epochs=10)
    for i, row in enumerate(values):
        rule.record(i, 1, row)
    return [not rule.should_stop(i, 1) for i in range(len(values))]


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("multi", [True, False])
def test_rung_decisions_match_brute_force(m: int, multi: bool) -> None:
    rng = np.random.default_rng(10 * m + multi)
    for directions in itertools.product(["maximize", "minimize"], repeat=m):
        for n, eta, min_trials in [(1, 3, 3), (2, 3, 3), (3, 3, 3), (8, 3, 3), (9, 2, 4), (20, 3, 5), (13, 4, 1)]:
            for grid in (3, 1000):  # a coarse grid gives ties and duplicates; a fine one distinct values
                values = rng.integers(0, grid, size=(n, m)).astype(float)
                got = run_rung(values, list(directions), eta=eta, min_trials=min_trials, multi=multi)
                assert got == brute_keep(values, list(directions), eta, min_trials, multi), (directions, n, values)


def test_fewer_trials_than_the_minimum_all_go_on_then_the_rule_bites() -> None:
    rule = SuccessiveHalving(EarlyStoppingConfig("moasha", 1, 3), directions=["maximize", "minimize"], max_epochs=9)
    assert rule.rungs == [1, 3] and rule.min_trials == 3
    assert not report(rule, "a", 1, [0.5, 100.0])
    assert not report(rule, "b", 1, [0.4, 200.0])  # dominated, but only two trials at the rung
    assert report(rule, "c", 1, [0.3, 300.0])  # dominated by both: the third report decides, and stops it
    assert not report(rule, "c", 1, [0.9, 1.0])  # a second report at the same rung changes nothing
    assert not report(rule, "d", 2, [0.1, 1e9])  # epoch 2 is no rung
    assert rule.rung_sizes() == {1: 3, 3: 0}


def test_moasha_keeps_a_cheap_trial_that_asha_would_stop() -> None:
    """Accuracy alone stops the cheapest model; the multi-objective rule keeps it as a front end."""
    table = [[0.80, 5e6], [0.78, 4e6], [0.60, 1e5], [0.70, 6e6], [0.65, 7e6], [0.79, 8e6]]
    directions = ["maximize", "minimize"]
    moasha = run_rung(np.array(table), directions, eta=3, min_trials=3, multi=True)
    asha = run_rung(np.array(table), directions, eta=3, min_trials=3, multi=False)
    assert moasha[2] and not asha[2]
    assert asha == [True, False, False, False, False, True]


@pytest.mark.parametrize(("grace", "eta", "epochs", "rungs"), [
    (1, 3, 10, [1, 3, 9]), (1, 3, 9, [1, 3]), (2, 2, 10, [2, 4, 8]), (1, 1.5, 5, [1, 2, 3]), (5, 3, 5, []),
])
def test_rungs(grace: int, eta: float, epochs: int, rungs: list[int]) -> None:
    assert rung_epochs(EarlyStoppingConfig("moasha", grace, eta), epochs) == rungs


def test_nan_values_sort_last() -> None:
    order = rung_order(np.array([[np.nan, 1.0], [0.5, 2.0], [0.4, 3.0]]), ["maximize", "minimize"], multi_objective=True)
    assert order.tolist()[-1] == 0
    order = rung_order(np.array([[np.nan, 1.0], [0.5, 2.0]]), ["maximize", "minimize"], multi_objective=False)
    assert order.tolist() == [1, 0]
