"""The goal with a search per strategy: the derived single-strategy spaces are valid, and the
pooled verdict says what a dense model reaches in the goal's budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_goal as goal  # noqa: E402

from search_space.spec import load_space  # noqa: E402


@pytest.mark.parametrize("strategy", ["span_pyramid", "dense_cnn", "tnet_traversal", "sparse_topk", "dense_vit"])
def test_a_single_strategy_space_keeps_only_what_that_strategy_takes(tmp_path: Path, strategy: str) -> None:
    raw = goal.single_strategy_space(ROOT / "search_space" / "cells64.yaml", strategy, 7)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    space = load_space(path)  # the real validator: shared keys the strategy does not take would be refused
    assert space.model.strategy_names == [strategy] and space.search.trials == 7 and space.search.timeout_s is None
    assert raw["name"] == f"cells64_{strategy}"


def test_an_unknown_strategy_is_one_line() -> None:
    with pytest.raises(SystemExit, match="has no block for strategy 'nope'"):
        goal.single_strategy_space(ROOT / "search_space" / "cells64.yaml", "nope", 4)


def pooled(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["number", "strategy", "sparse", "accuracy", "test_accuracy", "flops"])


def test_the_dense_model_inside_the_budget_is_named() -> None:
    trials = pooled([(0, "dense_cnn", False, 0.94, 0.907, 14e6), (12, "dense_cnn", False, 0.938, 0.907, 3.64e6),
                     (2, "span_pyramid", True, 0.85, 0.826, 4.6e6)])
    text = goal.dense_within_budget(trials)
    assert text.startswith("In that budget (4.67 MFLOPs) the most accurate dense model, dense_cnn #12, reaches 90.7% test")
    assert goal.dense_within_budget(trials[trials["number"] != 12]).startswith("No dense model fits")


def test_the_pooled_front_counts_each_strategy_cheapest_first() -> None:
    trials = pooled([(0, "dense_cnn", False, 0.94, 0.907, 14e6), (12, "dense_cnn", False, 0.938, 0.907, 3.64e6),
                     (2, "span_pyramid", True, 0.85, 0.826, 4.6e6), (10, "span_pyramid", True, 0.67, 0.64, 0.11e6)])
    rows, words = goal.pooled_front(trials)
    assert [r[:2] for r in rows] == [["span_pyramid", "#10"], ["dense_cnn", "#12"], ["dense_cnn", "#0"]]
    assert words == "The pooled front's 3 members: dense_cnn 2 (3.64-14.00 MFLOPs); span_pyramid 1 (0.11 MFLOPs). "
