"""Pareto fronts, non-dominated sorting, hypervolume and the knee: the one definition every layer uses.

Numpy and moocore, no torch, so the report, export's trial picking and the engine's early-stopping
rule share it. Every function takes objective values in their own units with a direction per column
("maximize" or "minimize"); internally values become losses (maximised columns negated) so that
smaller is better everywhere. Rows holding a NaN are never on a front and dominate nothing.

Hypervolume comes from moocore (``moocore.hypervolume``): a documented public function, maintained
with the C code of the algorithms' own authors (Fonseca, Paquete and López-Ibáñez's dimension sweep,
Guerreiro and Fonseca's HV3D+ and HV4D+), exact for any number of objectives, O(n log n) for 2 and 3,
O(n^2) for 4, with wheels for every platform that need only numpy and cffi. Optuna's own lives in
the private ``optuna._hypervolume``, free to change between releases, so it is not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np

__all__ = ["DIRECTIONS", "hypervolume", "knee_point", "nondominated_ranks", "normalized_hypervolume", "pareto_mask",
           "to_losses"]

DIRECTIONS = ("maximize", "minimize")


# --------------------------------------------------------------------------------------- arrays


def _check_directions(directions: Sequence[str], m: int) -> None:
    if len(directions) != m:
        raise ValueError(f"need one direction per objective column: got {len(directions)} for {m} columns")
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"directions must be 'maximize' or 'minimize', but got {bad}")


def to_losses(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Values (n, m) as losses: maximised columns negated, so smaller is better in every column."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D array (n, m), but got shape {values.shape}")
    _check_directions(directions, values.shape[1])
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return values * sign


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask (n,) of the non-dominated rows of ``values`` (n, m).

    A row is dominated when another row is at least as good in every objective and strictly better in
    one. Exact duplicates do not dominate each other, so both copies of a non-dominated point are kept
    (two trials that reached the same figures are equally good answers). Rows holding a NaN are never
    on the front and dominate nothing. O(n^2 m) time, chunked to keep memory at O(n * chunk).
    """
    losses = to_losses(values, directions)
    n = losses.shape[0]
    finite = np.isfinite(losses).all(axis=1)
    mask = finite.copy()
    pts = losses[finite]
    if len(pts) == 0:
        return mask
    dominated = np.zeros(len(pts), dtype=bool)
    chunk = max(1, 2_000_000 // max(1, len(pts) * losses.shape[1]))
    for start in range(0, len(pts), chunk):
        block = pts[start : start + chunk]  # (c, m): is block[i] dominated by any pts[j]?
        le = (pts[None, :, :] <= block[:, None, :]).all(axis=2)  # (c, n)
        lt = (pts[None, :, :] < block[:, None, :]).any(axis=2)
        dominated[start : start + chunk] = (le & lt).any(axis=1)
    mask[np.flatnonzero(finite)] = ~dominated
    assert mask.shape == (n,)
    return mask


def hypervolume(values: np.ndarray, directions: Sequence[str], reference_point: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``values`` (n, m) and bounded by ``reference_point`` (m,), for any m.

    Points not strictly better than the reference in every objective contribute nothing, and neither
    do rows with NaN. Computed by ``moocore.hypervolume`` on the losses (see the module docstring);
    the rows it is given are filtered here so that rule holds whatever the library does at the edge.
    """
    losses = to_losses(values, directions)
    ref = to_losses(np.asarray(reference_point, dtype=float)[None, :], directions)[0]
    if not np.isfinite(ref).all():
        raise ValueError(f"the reference point must be finite, but got {list(reference_point)}")
    inside = np.isfinite(losses).all(axis=1) & (losses < ref).all(axis=1)
    pts = losses[inside]
    if len(pts) == 0:
        return 0.0
    return float(moocore.hypervolume(np.ascontiguousarray(pts), ref=ref))


def normalized_hypervolume(values: np.ndarray, directions: Sequence[str], reference_point: Sequence[float],
                           ideal_point: Sequence[float]) -> float:
    """Hypervolume as a share of the box between ``reference_point`` and ``ideal_point`` (the best value
    each objective can take: accuracy 1, a cost 0), so 1.0 is a front holding the ideal itself.

    The one normalisation every figure of this project uses (the report, docs/benchmarks.md): for
    accuracy and FLOPs with reference (0, max_flops) it is the hypervolume divided by max_flops. Runs
    compare only under the same reference point.
    """
    ideal = to_losses(np.asarray(ideal_point, dtype=float)[None, :], directions)[0]
    ref = to_losses(np.asarray(reference_point, dtype=float)[None, :], directions)[0]
    box = float(np.prod(ref - ideal))
    if not np.isfinite(box) or (ref <= ideal).any():
        raise ValueError(f"the reference point {list(reference_point)} must be worse than the ideal point "
                         f"{list(ideal_point)} in every objective")
    return hypervolume(values, directions, reference_point) / box


def _extremes(norm: np.ndarray) -> np.ndarray:
    """Distinct rows (k <= m) of a normalised front that are best in some objective; a tie for best goes
    to the row with the smallest sum over the other objectives (the one a step along that objective
    would reach last)."""
    picks = [int(np.lexsort((norm.sum(axis=1), norm[:, j]))[0]) for j in range(norm.shape[1])]
    return norm[sorted(set(picks))]


def _extreme_normal(extremes: np.ndarray) -> np.ndarray:
    """Unit normal of the hyperplane through ``extremes`` (k, m), oriented away from the ideal point.

    With m affinely independent extremes the hyperplane is unique. With fewer (one row best in two
    objectives), many pass through them: take the one whose normal is nearest (1, ..., 1), the normal of
    the plane through the unit points, by projecting (1, ..., 1) off the directions the extremes span.
    """
    m = extremes.shape[1]
    ones = np.ones(m)
    normal = ones
    if len(extremes) > 1:
        _, sv, vt = np.linalg.svd(extremes[1:] - extremes[0])
        spanned = vt[: int((sv > 1e-12 * max(1.0, sv.max())).sum())]  # (r, m): the extremes' directions
        projected = ones - spanned.T @ (spanned @ ones)
        if np.linalg.norm(projected) > 1e-9:
            normal = projected
    return normal / np.linalg.norm(normal)


def knee_point(values: np.ndarray, directions: Sequence[str], log_scale: Sequence[bool] | None = None) -> int:
    """Row index of the knee of the front of ``values`` (n, m), for any m >= 2 objectives.

    Only the non-dominated rows are considered. Each objective is taken on a log scale where
    ``log_scale`` says so (costs spanning decades, as plotted), then normalised to [0, 1] over the
    front, 0 being best. The knee is the front point farthest from the hyperplane through the front's
    extremes (the points best in one objective), on the side of the ideal point: where the trade-off
    bends most, so a step any way gives up more than it gains. With two objectives that hyperplane is
    the straight line through the two ends of the front.

    Why not the smallest sum of normalised values (the distance from the plane through the unit
    points, the same rule for two objectives): with two correlated costs (FLOPs and parameters) the
    cheapest trial is best in both, sums to 1 and often wins, an end of the front named as its knee.
    The extremes lie on their own hyperplane, at distance 0, so here an end is the knee only where no
    point bends toward the ideal. Why not the point nearest the ideal: it is another rule than the
    two-objective knee the report, export and docs/benchmarks.md have always used, and would move the
    knee of every two-objective run. When the extremes span less than a hyperplane (one trial best in
    two objectives, common on small fronts), the hyperplane through them whose normal is nearest the
    unit points' plane is used.

    Ties, and fronts with no bend (one or two points on a 2-D front, a front that bulges away from the
    ideal), go to the point best in the first objective, then the second, and so on.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"knee_point needs an array of two or more objectives (n, m), but got shape {values.shape}")
    m = values.shape[1]
    if log_scale is not None and len(log_scale) != m:
        raise ValueError(f"log_scale needs one flag per objective column: got {len(log_scale)} for {m} columns")
    front = np.flatnonzero(pareto_mask(values, directions))
    if len(front) == 0:
        raise ValueError("knee_point needs at least one finite point")
    pts = values[front].copy()
    for j, use_log in enumerate(log_scale or [False] * m):
        if use_log and (pts[:, j] > 0).all():
            pts[:, j] = np.log10(pts[:, j])
    losses = to_losses(pts, directions)
    span = losses.max(axis=0) - losses.min(axis=0)
    norm = (losses - losses.min(axis=0)) / np.where(span > 0, span, 1.0)
    extremes = _extremes(norm)
    gain = (extremes[0] - norm) @ _extreme_normal(extremes)  # signed distance toward the ideal
    best_first = np.lexsort(losses.T[::-1])  # first objective, then the second, ...
    top = np.flatnonzero(np.isclose(gain, gain.max()))
    rank = np.empty(len(front), dtype=int)
    rank[best_first] = np.arange(len(front))
    return int(front[top[np.argmin(rank[top])]])


def nondominated_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Front index (n,) of every row by non-dominated sorting: 0 for the Pareto front, 1 for the front
    of what is left, and so on. Rows holding a NaN get the rank after the last front. O(n^2 m) per front.
    """
    losses = to_losses(values, directions)
    n = losses.shape[0]
    ranks = np.full(n, -1, dtype=int)
    finite = np.isfinite(losses).all(axis=1)
    left = np.flatnonzero(finite)
    rank = 0
    while len(left):
        front = pareto_mask(losses[left], ["minimize"] * losses.shape[1])
        ranks[left[front]] = rank
        left = left[~front]
        rank += 1
    ranks[~finite] = rank
    return ranks
