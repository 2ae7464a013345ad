"""Pareto, hypervolume and pick maths against brute force."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellsparse.errors import UserError
from cellsparse.pareto import hypervolume, knee_point, pareto_mask
from cellsparse.run_space import RunSpace
from reports.picks import hypervolume_history, most_accurate, most_accurate_within_budget, pick_trial

DIRECTION_SETS = [
    ("maximize", "minimize"),
    ("minimize", "minimize"),
    ("maximize", "maximize"),
    ("maximize", "minimize", "minimize"),
    ("minimize", "maximize", "minimize"),
]


def better_or_equal(a: np.ndarray, b: np.ndarray, directions) -> np.ndarray:
    """a is at least as good as b in each objective (elementwise), in the objectives' own directions."""
    return np.array([a[k] >= b[k] if d == "maximize" else a[k] <= b[k] for k, d in enumerate(directions)])


def brute_front(values: np.ndarray, directions) -> np.ndarray:
    n = len(values)
    keep = np.ones(n, dtype=bool)
    for i, j in itertools.product(range(n), range(n)):
        if i != j and better_or_equal(values[j], values[i], directions).all() and (values[j] != values[i]).any():
            keep[i] = False
    return keep


def grid_hypervolume(values: np.ndarray, directions, ref) -> float:
    """Exact for integer points and reference: count the unit cells some point dominates."""
    lo = np.minimum(values.min(axis=0), ref) - 1
    hi = np.maximum(values.max(axis=0), ref) + 1
    count = 0
    for cell in itertools.product(*[range(int(a), int(b)) for a, b in zip(lo, hi, strict=True)]):
        centre = np.array(cell) + 0.5
        inside = all(centre[k] < ref[k] if d == "minimize" else centre[k] > ref[k] for k, d in enumerate(directions))
        if inside and any(better_or_equal(p, centre, directions).all() for p in values):
            count += 1
    return float(count)


@pytest.mark.parametrize("directions", DIRECTION_SETS)
@pytest.mark.parametrize("seed", range(4))
def test_pareto_mask_matches_brute_force_with_ties_and_duplicates(directions, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 5, size=(40, len(directions))).astype(float)  # many ties and duplicates
    values[5] = values[3]  # a guaranteed duplicate
    np.testing.assert_array_equal(pareto_mask(values, directions), brute_front(values, directions))


def test_duplicates_on_the_front_are_both_kept():
    values = np.array([[0.9, 10.0], [0.9, 10.0], [0.8, 20.0]])
    assert pareto_mask(values, ["maximize", "minimize"]).tolist() == [True, True, False]


def test_pareto_mask_ignores_nan_rows():
    values = np.array([[0.9, 10.0], [np.nan, 1.0], [0.95, 5.0]])
    assert pareto_mask(values, ["maximize", "minimize"]).tolist() == [False, False, True]


def test_pareto_mask_rejects_bad_directions():
    with pytest.raises(ValueError, match="maximize"):
        pareto_mask(np.zeros((2, 2)), ["max", "minimize"])


@pytest.mark.parametrize("directions", DIRECTION_SETS)
@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_is_exact_on_integer_grids(directions, seed):
    rng = np.random.default_rng(100 + seed)
    m = len(directions)
    values = rng.integers(0, 6, size=(12, m)).astype(float)
    values[1] = values[0]  # duplicate
    # Reference just beyond the worst corner, sometimes cutting through the cloud so some points fall outside.
    ref = np.array([-1.0 if d == "maximize" else 6.0 for d in directions])
    if seed == 2:
        ref = np.array([2.0 if d == "maximize" else 3.0 for d in directions])
    assert hypervolume(values, directions, ref) == pytest.approx(grid_hypervolume(values, directions, ref))


def test_points_not_strictly_better_than_the_reference_count_nothing():
    directions = ["maximize", "minimize"]
    ref = [0.5, 100.0]
    on_the_edge = np.array([[0.5, 10.0], [0.9, 100.0], [0.4, 5.0]])
    assert hypervolume(on_the_edge, directions, ref) == 0.0
    assert hypervolume(np.vstack([on_the_edge, [0.7, 50.0]]), directions, ref) == pytest.approx(0.2 * 50.0)
    assert hypervolume(np.empty((0, 2)), directions, ref) == 0.0


def test_two_objective_hypervolume_by_hand():
    values = np.array([[0.9, 30.0], [0.8, 10.0], [0.6, 5.0]])
    # Losses (-acc, flops) against (0, 40): union of three rectangles.
    expected = 0.9 * 10 + 0.8 * 20 + 0.6 * 5
    assert hypervolume(values, ["maximize", "minimize"], [0.0, 40.0]) == pytest.approx(expected)


def test_knee_point_finds_the_bend_on_log_flops():
    values = np.array([[0.50, 1e5], [0.90, 1e6], [0.92, 1e8], [0.70, 3e6]])  # the last one is dominated
    assert knee_point(values, ["maximize", "minimize"], [False, True]) == 1


def test_knee_point_of_one_or_two_points_is_the_best_in_the_first_objective():
    assert knee_point(np.array([[0.7, 5.0]]), ["maximize", "minimize"]) == 0
    assert knee_point(np.array([[0.7, 5.0], [0.9, 50.0]]), ["maximize", "minimize"]) == 1
    collinear = np.array([[0.1, 1.0], [0.2, 2.0], [0.3, 3.0]])
    assert knee_point(collinear, ["maximize", "minimize"]) == 2


def trials_table() -> pd.DataFrame:
    """Eight trials: the most accurate ones are failed, pruned or over budget and must never be picked."""
    return pd.DataFrame({
        "number": range(8),
        "state": ["COMPLETE", "COMPLETE", "FAIL", "PRUNED", "COMPLETE", "COMPLETE", "COMPLETE", "RUNNING"],
        "feasible": [True, True, True, True, False, True, True, None],
        "accuracy": [0.70, 0.85, 0.99, 0.98, 0.97, 0.90, 0.60, 0.99],
        "flops": [1e5, 1e6, 1e4, 1e4, 1e4, 1e7, 1e4, 1e3],
    })


DIRS = {"accuracy": "maximize", "flops": "minimize"}


def test_picks_skip_failed_pruned_running_and_infeasible_trials():
    trials = trials_table()
    assert pick_trial(trials, DIRS, "accuracy") == 5
    assert most_accurate(trials, DIRS) == 5
    assert pick_trial(trials, DIRS, "budget", max_flops=2e6) == 1
    assert most_accurate_within_budget(trials, 1e4, DIRS) == 6
    assert most_accurate_within_budget(trials, 1e3, DIRS) is None
    # Front of eligible trials: 6 (0.60, 1e4), 0 (0.70, 1e5), 1 (0.85, 1e6), 5 (0.90, 1e7); the knee is 1.
    assert pick_trial(trials, DIRS, "knee") == 1
    assert pick_trial(trials, list(DIRS.items()), "knee") == 1  # (name, direction) pairs work too


def test_feasible_column_as_written_to_csv(tmp_path):
    trials = trials_table()
    trials["feasible"] = trials["feasible"].map({True: "true", False: "false", None: ""})
    path = tmp_path / "trials.csv"
    trials.to_csv(path, index=False)
    assert pick_trial(pd.read_csv(path), DIRS, "accuracy") == 5


def test_pick_trial_explains_when_nothing_qualifies():
    failed = trials_table().assign(state="FAIL")
    for how in ("knee", "accuracy"):
        with pytest.raises(UserError, match="no complete, feasible trial"):
            pick_trial(failed, DIRS, how)
    with pytest.raises(UserError, match="max_flops"):
        pick_trial(trials_table(), DIRS, "budget")
    with pytest.raises(UserError, match="FLOPs <= 10"):
        pick_trial(trials_table(), DIRS, "budget", max_flops=10)
    with pytest.raises(UserError, match="how must be"):
        pick_trial(trials_table(), DIRS, "best")  # type: ignore[arg-type]


def test_hypervolume_history_counts_only_complete_feasible_trials():
    trials = trials_table()
    trials["datetime_start"] = pd.date_range("2025-01-01", periods=8, freq="min", tz="UTC").astype(str)
    trials["datetime_complete"] = pd.date_range("2025-01-01 00:00:30", periods=8, freq="min", tz="UTC").astype(str)
    ref = {"accuracy": 0.0, "flops": 2e7}
    by_number = hypervolume_history(trials, DIRS, ref, by="number")
    assert by_number["number"].tolist() == list(range(8))
    assert np.all(np.diff(by_number["hypervolume"]) >= 0)
    ok = [0, 1, 5, 6]
    expected = hypervolume(trials.loc[ok, ["accuracy", "flops"]].to_numpy(), ["maximize", "minimize"], [0.0, 2e7])
    assert by_number["hypervolume"].iloc[-1] == pytest.approx(expected)
    # Failed, pruned, infeasible and running trials leave the curve flat.
    assert by_number["hypervolume"].iloc[2] == by_number["hypervolume"].iloc[4] == by_number["hypervolume"].iloc[1]
    by_time = hypervolume_history(trials, DIRS, ref, by="time")
    assert by_time["number"].tolist() == ok[:3] + [6]
    assert by_time["elapsed_s"].tolist() == [30.0, 90.0, 330.0, 390.0]
    assert by_time["hypervolume"].iloc[-1] == pytest.approx(expected)


def test_reference_point_is_declared_or_derived_never_fitted():
    space = {"objectives": {"accuracy": "maximize", "flops": "minimize"},
             "constraints": {"max_flops": 2e7}, "search": {"reference_point": {"accuracy": 0.1, "flops": 1e7}}}
    point, origin = RunSpace.parse(space, Path("space.yaml")).reference_point()
    assert point == {"accuracy": 0.1, "flops": 1e7} and "search.reference_point" in origin
    space["search"]["reference_point"] = None
    point, origin = RunSpace.parse(space, Path("space.yaml")).reference_point()
    assert point == {"accuracy": 0.0, "flops": 2e7} and "derived from the constraints" in origin
    space["search"]["reference_point"] = {"flops": 5e6}
    point, origin = RunSpace.parse(space, Path("space.yaml")).reference_point()
    assert point == {"accuracy": 0.0, "flops": 5e6} and "accuracy = 0" in origin
    space = {"objectives": {"accuracy": "maximize", "peak_mem_mb": "minimize"}, "constraints": {"max_flops": 2e7}}
    point, origin = RunSpace.parse(space, Path("space.yaml")).reference_point()
    assert point is None and "peak_mem_mb" in origin


def three_objective_table() -> pd.DataFrame:
    """Eight trials over accuracy, FLOPs and params: failed, infeasible and running ones among them. Trial 1,
    the knee of accuracy and FLOPs, holds nearly as many parameters as the most accurate trial."""
    trials = trials_table()
    trials["params"] = [5e3, 9e5, 2e3, 2e3, 5e2, 1e6, 1.5e3, 70.0]
    trials["datetime_start"] = pd.date_range("2025-01-01", periods=8, freq="min", tz="UTC").astype(str)
    trials["datetime_complete"] = pd.date_range("2025-01-01 00:00:30", periods=8, freq="min", tz="UTC").astype(str)
    return trials


DIRS3 = {"accuracy": "maximize", "flops": "minimize", "params": "minimize"}


def test_the_knee_of_three_objectives_counts_every_objective():
    """pick_trial's knee is knee_point over all three objectives (log FLOPs and params, as plotted), among
    eligible trials only; with two objectives it stays the accuracy/FLOPs knee."""
    trials = three_objective_table()
    ok = [0, 1, 5, 6]
    values = trials.loc[ok, ["accuracy", "flops", "params"]].to_numpy(float)
    want = ok[knee_point(values, list(DIRS3.values()), [False, True, True])]
    assert pick_trial(trials, DIRS3, "knee") == want
    # the order the objectives were searched in does not move the knee
    assert pick_trial(trials, {"params": "minimize", "accuracy": "maximize", "flops": "minimize"}, "knee") == want
    assert pick_trial(trials, DIRS, "knee") == 1 and want == 0


def test_hypervolume_history_of_three_objectives_is_exact():
    from tests.cellsparse.test_pareto_hypervolume import brute_hypervolume

    trials = three_objective_table()
    ref = {"accuracy": 0.0, "flops": 2e7, "params": 2e6}
    by_number = hypervolume_history(trials, DIRS3, ref, by="number")
    dirs = list(DIRS3.values())
    for number in range(8):
        seen = [n for n in (0, 1, 5, 6) if n <= number]
        values = trials.loc[seen, list(DIRS3)].to_numpy(float).reshape(-1, 3)
        want = brute_hypervolume(values, dirs, np.array(list(ref.values())))
        assert by_number["hypervolume"].iloc[number] == pytest.approx(want, rel=1e-12)
    assert by_number["normalized"].iloc[-1] == pytest.approx(by_number["hypervolume"].iloc[-1] / (1.0 * 2e7 * 2e6))
