"""Asynchronous successive halving over several objectives: stop trials that cannot reach the front.

A trial reports its objective values after every epoch. At each *rung* (epochs ``grace * eta**i``,
below the trial's last epoch) its values are recorded, and it goes on only if it is among the best
``1/eta`` of all trials recorded at that rung so far (asynchronous: no trial waits for others, as in
ASHA, Li et al. 2020). "Best" is decided by :func:`rung_order`:

- ``moasha`` (multi-objective ASHA, Schmucker et al. 2021): non-dominated sorting of the rung's
  values in every objective (accuracy at the rung, FLOPs, ...). Trials in a lower front come first;
  within one front, the larger NSGA-II crowding distance first (the front's ends, the cheapest and the
  most accurate, are kept before crowded middles); then the earlier arrival at the rung.
- ``asha``: the first objective (accuracy) alone, then the earlier arrival.

A rung decides nothing until it holds at least ``min_trials`` trials (default ``ceil(eta)``): with
fewer, every trial goes on, so the first trials of a search are never cut against an empty table.
Of ``n`` recorded trials the first ``max(1, floor(n / eta))`` in that order go on.

The rule is plain data and code with no Ray or Optuna import. The search driver holds it, whatever
the executor: ``SearchDriver.report`` (each epoch of a trial, from any executor) calls
:meth:`SuccessiveHalving.record` and then :meth:`SuccessiveHalving.should_stop`, and ``--resume``
rebuilds the rung tables from the trials' recorded values with ``record``. (``early_stopping: asha``
on the Ray executor is Tune's own scheduler instead, the single-metric baseline.)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from cellsparse.pareto import nondominated_ranks, to_losses
from search_space.spec import EARLY_STOPPING_RULES, EarlyStoppingConfig

RULES = EARLY_STOPPING_RULES
__all__ = ["RULES", "EarlyStoppingConfig", "SuccessiveHalving", "crowding_distance", "rung_epochs", "rung_order"]


def rung_epochs(config: EarlyStoppingConfig, max_epochs: int) -> list[int]:
    """Epochs ``grace * eta**i`` at which a trial of ``max_epochs`` epochs is judged (never its last)."""
    rungs, level = [], 0
    while True:
        epoch = int(round(config.grace_epochs * config.reduction_factor**level))
        if epoch >= max_epochs:
            return rungs
        if not rungs or epoch > rungs[-1]:
            rungs.append(epoch)
        level += 1


def crowding_distance(losses: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance (n,) of the rows of one front (n, m): the ends of each objective get
    infinity, the others the sum over objectives of the normalised gap between their neighbours."""
    n, m = losses.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(losses[:, j], kind="stable")
        span = losses[order[-1], j] - losses[order[0], j]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (losses[order[2:], j] - losses[order[:-2], j]) / span
    return distance


def rung_order(values: np.ndarray, directions: Sequence[str], *, multi_objective: bool) -> np.ndarray:
    """Row indices of ``values`` (n, m), best first; rows are in arrival order (see the module docstring)."""
    values = np.asarray(values, dtype=float)
    arrival = np.arange(len(values))
    if not multi_objective:
        losses = to_losses(values[:, :1], directions[:1])[:, 0]
        losses = np.where(np.isfinite(losses), losses, np.inf)
        return np.lexsort((arrival, losses))
    ranks = nondominated_ranks(values, directions)
    losses = to_losses(values, directions)
    crowding = np.zeros(len(values))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        if np.isfinite(losses[members]).all():
            crowding[members] = crowding_distance(losses[members])
    return np.lexsort((arrival, -crowding, ranks))


class SuccessiveHalving:
    """The rung tables of one search and the stop/continue decision (see the module docstring)."""

    def __init__(self, config: EarlyStoppingConfig, *, directions: Sequence[str], max_epochs: int) -> None:
        if config.name not in ("asha", "moasha"):
            raise ValueError(f"early stopping rule must be one of {RULES[1:]}, got {config.name!r}")
        self.config = config
        self.directions = list(directions)
        self.rungs = rung_epochs(config, max_epochs)
        self.min_trials = config.min_trials or math.ceil(config.reduction_factor)
        self._tables: dict[int, dict[Hashable, tuple[float, ...]]] = {rung: {} for rung in self.rungs}

    def record(self, trial: Hashable, epoch: int, values: Sequence[float]) -> bool:
        """Enter ``trial``'s values at ``epoch`` if that is a rung (first report only); whether it was."""
        table = self._tables.get(epoch)
        if table is None or trial in table:
            return False
        if len(values) != len(self.directions):
            raise ValueError(f"expected {len(self.directions)} objective values, got {len(values)}")
        table[trial] = tuple(float(v) for v in values)
        return True

    def should_stop(self, trial: Hashable, epoch: int) -> bool:
        """Whether ``trial``, recorded at rung ``epoch``, falls outside the best 1/eta there."""
        table = self._tables.get(epoch, {})
        if trial not in table or len(table) < self.min_trials:
            return False
        keep = max(1, int(len(table) // self.config.reduction_factor))
        trials = list(table)
        order = rung_order(np.array([table[t] for t in trials]), self.directions,
                           multi_objective=self.config.name == "moasha")
        return trials.index(trial) not in set(order[:keep].tolist())

    def rung_sizes(self) -> dict[int, int]:
        """How many trials each rung has recorded (for logs and tests)."""
        return {rung: len(table) for rung, table in self._tables.items()}
