"""Hypervolume (moocore underneath) and the knee for two to four objectives, against brute force.

Brute force here is exact, not sampled: the hypervolume is summed over the grid the points' and the
reference's distinct coordinates cut the box into (every cell is either wholly dominated or not), and
the knee is found by measuring each front point's distance from the hyperplane through the front's
extremes, its normal solved as a least-squares problem rather than projected as the library does.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cellsparse.pareto import hypervolume, knee_point, normalized_hypervolume, to_losses


def brute_hypervolume(values: np.ndarray, directions: list[str], ref: np.ndarray) -> float:
    """The volume of the union of the boxes [point, ref] (in losses), cell by cell over the grid of distinct
    coordinates. A cell counts when some point, finite and strictly better than ref everywhere, is at
    least as good as the cell's best corner in every objective."""
    losses = to_losses(values, directions)
    r = to_losses(np.asarray(ref, dtype=float)[None, :], directions)[0]
    keep = np.isfinite(losses).all(axis=1) & (losses < r).all(axis=1)
    pts = losses[keep]
    if len(pts) == 0:
        return 0.0
    axes = [np.unique(np.append(pts[:, j], r[j])) for j in range(len(r))]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        low = np.array([axes[j][i] for j, i in enumerate(cell)])
        high = np.array([axes[j][i + 1] for j, i in enumerate(cell)])
        if (pts <= low).all(axis=1).any():
            total += float(np.prod(high - low))
    return total


def random_case(rng: np.random.Generator, m: int, n: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A random table with ties, duplicates, a NaN row and points on and beyond the reference."""
    directions = [str(d) for d in rng.choice(["maximize", "minimize"], m)]
    values = rng.uniform(0, 1, size=(n, m))
    values[:, 0] = np.round(values[:, 0] * 4) / 4  # ties in the first objective
    values[1] = values[0]  # a duplicate
    values[2, -1] = np.nan
    ref = np.array([0.1 if d == "maximize" else 0.9 for d in directions])
    values[3] = ref  # on the reference: counts nothing
    values[4, 0] = 1.5 if directions[0] == "minimize" else -0.5  # beyond it in one objective
    return values, directions, ref


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_equals_the_union_of_boxes(m: int, seed: int) -> None:
    rng = np.random.default_rng(1000 * m + seed)
    values, directions, ref = random_case(rng, m, n=9 if m == 4 else 14)
    want = brute_hypervolume(values, directions, ref)
    assert want > 0
    assert hypervolume(values, directions, ref) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_every_direction_combination_and_integer_grids(m: int) -> None:
    """Coarse integer values: many points share a coordinate, several sit on the reference's faces."""
    rng = np.random.default_rng(m)
    for directions in itertools.product(["maximize", "minimize"], repeat=m):
        values = rng.integers(0, 4, size=(8, m)).astype(float)
        ref = np.array([0.0 if d == "maximize" else 3.0 for d in directions])
        got = hypervolume(values, list(directions), ref)
        assert got == pytest.approx(brute_hypervolume(values, list(directions), ref), abs=1e-12)


def test_a_point_outside_the_reference_or_on_it_adds_nothing() -> None:
    directions = ["maximize", "minimize", "minimize"]
    ref = [0.0, 10.0, 5.0]
    inside = np.array([[0.5, 4.0, 1.0]])
    base = hypervolume(inside, directions, ref)
    assert base == pytest.approx(0.5 * 6.0 * 4.0)
    for outside in ([0.9, 11.0, 0.0], [0.9, 10.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 5.0]):
        assert hypervolume(np.vstack([inside, outside]), directions, ref) == pytest.approx(base)
    assert hypervolume(np.empty((0, 3)), directions, ref) == 0.0
    assert hypervolume(np.array([[np.nan, 1.0, 1.0]]), directions, ref) == 0.0


def test_duplicates_and_dominated_points_do_not_change_it() -> None:
    rng = np.random.default_rng(5)
    directions = ["maximize", "minimize", "minimize", "maximize"]
    values = rng.uniform(0, 1, size=(10, 4))
    ref = np.array([0.0, 1.0, 1.0, 0.0])
    base = hypervolume(values, directions, ref)
    worse = values * np.array([0.5, 1.0, 1.0, 0.5]) + np.array([0.0, 0.1, 0.0, 0.0])  # dominated copies
    assert hypervolume(np.vstack([values, values, worse]), directions, ref) == pytest.approx(base, rel=1e-12)


def test_normalised_hypervolume_of_the_ideal_is_one_in_three_objectives() -> None:
    directions = ["maximize", "minimize", "minimize"]
    ideal, ref = [1.0, 0.0, 0.0], [0.0, 8.0, 2.0]
    assert normalized_hypervolume(np.array([ideal]), directions, ref, ideal) == pytest.approx(1.0)
    half = np.array([[0.5, 0.0, 0.0]])
    assert normalized_hypervolume(half, directions, ref, ideal) == pytest.approx(0.5)


def test_the_reference_must_be_finite() -> None:
    with pytest.raises(ValueError, match="reference point must be finite"):
        hypervolume(np.ones((2, 3)), ["minimize"] * 3, [2.0, np.inf, 2.0])


# ----------------------------------------------------------------------------------------- knee


def dominated_by_any(losses: np.ndarray, i: int) -> bool:
    others = np.delete(losses, i, axis=0)
    return bool(((others <= losses[i]).all(axis=1) & (others < losses[i]).any(axis=1)).any())


def brute_knee(values: np.ndarray, directions: list[str], log_scale: list[bool]) -> int:
    """The knee by its definition, spelled out: the front by pairwise domination, each objective on its
    scale and normalised over the front, the extremes (best in an objective; ties to the smallest sum),
    the hyperplane through them with the normal nearest (1, ..., 1) found as a least-squares problem
    (its Lagrangian), the largest signed distance toward the ideal, ties to the lexicographically best."""
    m = values.shape[1]
    losses_all = to_losses(values, directions)
    finite = [i for i in range(len(values)) if np.isfinite(losses_all[i]).all()]
    front = [i for i in finite if not dominated_by_any(losses_all[finite], finite.index(i))]
    scaled = values[front].astype(float)
    for j in range(m):
        if log_scale[j] and (scaled[:, j] > 0).all():
            scaled[:, j] = np.log10(scaled[:, j])
    losses = to_losses(scaled, directions)
    lo, hi = losses.min(axis=0), losses.max(axis=0)
    norm = (losses - lo) / np.where(hi > lo, hi - lo, 1.0)
    chosen = sorted({min(range(len(front)), key=lambda k, j=j: (norm[k, j], norm[k].sum(), k)) for j in range(m)})
    extremes = norm[chosen]
    edges = extremes[1:] - extremes[0]
    ones = np.ones(m)
    # minimise |n - 1|^2 subject to edges @ n = 0: n = 1 - edges^T (edges edges^T)^+ edges 1
    normal = ones - edges.T @ np.linalg.pinv(edges @ edges.T) @ (edges @ ones)
    if np.linalg.norm(normal) < 1e-9:
        normal = ones
    normal /= np.linalg.norm(normal)
    distance = (extremes[0] - norm) @ normal
    for e in extremes:  # the extremes are on their own plane
        assert abs((extremes[0] - e) @ normal) < 1e-9
    best = distance.max()
    tied = [k for k in range(len(front)) if abs(distance[k] - best) <= 1e-8 + 1e-5 * abs(best)]
    return front[min(tied, key=lambda k: tuple(losses[k]))]


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("seed", range(25))
def test_knee_matches_its_definition(m: int, seed: int) -> None:
    rng = np.random.default_rng(50 * m + seed)
    n = int(rng.integers(1, 12))
    directions = [str(d) for d in rng.choice(["maximize", "minimize"], m)]
    values = rng.integers(1, 6, size=(n, m)).astype(float) if seed % 2 else rng.uniform(0.1, 1.0, size=(n, m))
    log_scale = [bool(b) for b in rng.integers(0, 2, m)]
    if seed % 5 == 0 and n > 1:
        values[-1] = values[0]  # a duplicate on or off the front
    assert knee_point(values, directions, log_scale) == brute_knee(values, directions, log_scale)


def test_knee_of_three_objectives_by_hand() -> None:
    """Accuracy, FLOPs, params: the balanced trial beats the three specialists, and a trial dominated by
    it (worse everywhere) is never the answer."""
    values = np.array([
        [0.95, 9e6, 9e5],  # most accurate, costly in both
        [0.60, 1e5, 8e5],  # cheapest in FLOPs
        [0.62, 8e6, 1e4],  # fewest parameters
        [0.90, 5e5, 5e4],  # the knee
        [0.85, 6e5, 6e4],  # dominated by the knee
    ])
    directions = ["maximize", "minimize", "minimize"]
    assert knee_point(values, directions, [False, True, True]) == 3
    assert knee_point(values[[4, 0, 1, 2, 3]], directions, [False, True, True]) == 4  # order does not matter


def test_the_cheapest_trial_best_in_two_correlated_costs_is_no_knee() -> None:
    """FLOPs and params fall together: the cheapest trial is best in both and so an end of the front, on
    the plane through the ends. The smallest sum of normalised values would pick it (1.0 against 1.11);
    the knee is the accurate, still cheap trial."""
    values = np.array([
        [0.90, 1e7, 1e6],  # most accurate
        [0.60, 1e5, 1e4],  # cheapest in both costs
        [0.88, 1e6, 1.2e5],  # where the trade-off bends
        [0.70, 8e5, 9e4],
    ])
    directions = ["maximize", "minimize", "minimize"]
    losses = to_losses(np.column_stack([values[:, 0], np.log10(values[:, 1:])]), directions)
    norm = (losses - losses.min(axis=0)) / (losses.max(axis=0) - losses.min(axis=0))
    assert np.argmin(norm.sum(axis=1)) == 1 and norm.sum(axis=1)[[1, 2]] == pytest.approx([1.0, 1.106], abs=1e-3)
    assert knee_point(values, directions, [False, True, True]) == 2


def test_a_front_bulging_away_from_the_ideal_has_its_knee_at_the_first_objective_s_best() -> None:
    directions = ["minimize"] * 3
    concave = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.9, 0.9, 0.9]])
    assert knee_point(concave, directions) == 0


def test_knee_ignores_nan_rows_and_ties_go_to_the_best_first_objective() -> None:
    directions = ["minimize"] * 3
    corners = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [np.nan, 0.0, 0.0]])
    assert knee_point(corners, directions) == 0  # all three are ends: the best in the first objective
    assert knee_point(corners[[1, 0, 2, 3]], directions) == 1


def test_knee_rejects_what_it_cannot_answer() -> None:
    with pytest.raises(ValueError, match="two or more objectives"):
        knee_point(np.ones((3, 1)), ["minimize"])
    with pytest.raises(ValueError, match="one flag per objective"):
        knee_point(np.ones((3, 3)), ["minimize"] * 3, [True, False])
    with pytest.raises(ValueError, match="at least one finite point"):
        knee_point(np.full((2, 3), np.nan), ["minimize"] * 3)
