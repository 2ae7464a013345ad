"""Pareto fronts, non-dominated sorting and hypervolume: the one definition every layer uses.

Pure numpy, no torch, so the report, export's trial picking and the engine's early-stopping rule
share it. Every function takes objective values in their own units with a direction per column
("maximize" or "minimize"); internally values become losses (maximised columns negated) so that
smaller is better everywhere. Rows holding a NaN are never on a front and dominate nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _hv_losses(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of loss points (all strictly below ``ref``) by slicing on the last axis."""
    m = points.shape[1]
    if len(points) == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - points[:, 0].min())
    if m == 2:
        # Sweep in x; each point adds the strip between its y and the best y seen so far.
        order = np.lexsort((points[:, 1], points[:, 0]))
        area, best_y = 0.0, ref[1]
        for x, y in points[order]:
            if y < best_y:
                area += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(area)
    # m >= 3: the slab between consecutive last-axis levels is covered by the (m-1)-D volume of
    # every point at or below the lower level.
    order = np.argsort(points[:, -1], kind="stable")
    pts = points[order]
    levels = np.append(pts[:, -1], ref[-1])
    volume = 0.0
    for i in range(len(pts)):
        depth = levels[i + 1] - levels[i]
        if depth <= 0:
            continue
        head = pts[: i + 1, :-1]
        head = head[pareto_mask(head, ["minimize"] * (m - 1))]
        volume += _hv_losses(head, ref[:-1]) * depth
    return float(volume)


def hypervolume(values: np.ndarray, directions: Sequence[str], reference_point: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``values`` (n, m) and bounded by ``reference_point`` (m,).

    Points not strictly better than the reference in every objective contribute nothing, and neither
    do rows with NaN. Exact for any m: a sweep for 2 objectives, slicing along the last objective
    for 3 or more (O(n^2 log n) for 3, fine for the few hundred trials of a search).
    """
    losses = to_losses(values, directions)
    ref = to_losses(np.asarray(reference_point, dtype=float)[None, :], directions)[0]
    if not np.isfinite(ref).all():
        raise ValueError(f"the reference point must be finite, but got {list(reference_point)}")
    inside = np.isfinite(losses).all(axis=1) & (losses < ref).all(axis=1)
    pts = losses[inside]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts, ["minimize"] * pts.shape[1])]
    return _hv_losses(np.unique(pts, axis=0), ref)


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


def knee_point(values: np.ndarray, directions: Sequence[str], log_scale: Sequence[bool] | None = None) -> int:
    """Row index of the knee of a 2-D front ``values`` (n, 2).

    Only the non-dominated rows are considered. Each objective is taken on a log scale where
    ``log_scale`` says so (costs spanning decades, as plotted), then normalised to [0, 1] over the
    front, 0 being best. The knee is the front point farthest from the straight line through the
    two extremes, on the side of the ideal point: where the trade-off bends most, so a step either
    way gives up more than it gains. Ties, and fronts of one or two points where no bend exists,
    go to the point best in the first objective.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError(f"knee_point needs a 2-objective array (n, 2), but got shape {values.shape}")
    front = np.flatnonzero(pareto_mask(values, directions))
    if len(front) == 0:
        raise ValueError("knee_point needs at least one finite point")
    pts = values[front].copy()
    for j, use_log in enumerate(log_scale or (False, False)):
        if use_log and (pts[:, j] > 0).all():
            pts[:, j] = np.log10(pts[:, j])
    losses = to_losses(pts, directions)
    span = losses.max(axis=0) - losses.min(axis=0)
    norm = (losses - losses.min(axis=0)) / np.where(span > 0, span, 1.0)
    # Extremes: best in objective 0 (norm (0, 1)) and best in objective 1 (norm (1, 0)) on a 2-D front;
    # the line x + y = 1 joins them, and distance toward the ideal (0, 0) is (1 - x - y) / sqrt(2).
    gain = 1.0 - norm.sum(axis=1)
    best_first = np.lexsort((losses[:, 1], losses[:, 0]))  # first objective, then second
    if len(front) <= 2 or np.allclose(gain, gain.max()):
        return int(front[best_first[0]])
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
