"""Non-dominated sorting against the definition: a row's front is one past the deepest front of any
row that dominates it (0 when none does)."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from cellsparse.pareto import nondominated_ranks, to_losses


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a <= b).all() and (a < b).any())


def brute_ranks(values: np.ndarray, directions: list[str]) -> list[int]:
    losses = to_losses(values, directions)
    finite = np.isfinite(losses).all(axis=1)
    memo: dict[int, int] = {}

    def rank(i: int) -> int:
        if i not in memo:
            above = [j for j in range(len(losses)) if finite[j] and dominates(losses[j], losses[i])]
            memo[i] = 0 if not above else 1 + max(rank(j) for j in above)
        return memo[i]

    ranks = [rank(i) if finite[i] else -1 for i in range(len(losses))]
    last = max([r for r in ranks if r >= 0], default=-1) + 1
    return [r if r >= 0 else last for r in ranks]


@pytest.mark.parametrize("m", [2, 3])
def test_ranks_match_the_definition_on_random_tables_with_ties(m: int) -> None:
    rng = np.random.default_rng(m)
    for directions in itertools.product(["maximize", "minimize"], repeat=m):
        for n in (1, 2, 5, 17):
            values = rng.integers(0, 4, size=(n, m)).astype(float)  # a coarse grid: many ties and duplicates
            if n > 2:
                values[0, 0] = np.nan
            assert nondominated_ranks(values, list(directions)).tolist() == brute_ranks(values, list(directions))


def test_duplicates_share_a_front_and_the_base_imports_no_torch() -> None:
    values = np.array([[0.9, 10.0], [0.9, 10.0], [0.8, 20.0]])
    assert nondominated_ranks(values, ["maximize", "minimize"]).tolist() == [0, 0, 1]
    assert "cellsparse.pareto" in sys.modules
