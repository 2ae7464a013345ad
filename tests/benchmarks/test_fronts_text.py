"""The fronts comparison: per-strategy hypervolume and the goal's verdict follow the trials."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_fronts as fronts  # noqa: E402


def frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["number", "strategy", "sparse", "accuracy", "test_accuracy", "flops"])


def test_the_goal_is_met_or_short_by_its_points() -> None:
    dense = (0, "dense_cnn", False, 0.92, 0.90, 9e6)
    assert fronts.goal(frame([dense, (1, "span_pyramid", True, 0.90, 0.895, 3e6)])).startswith("met")
    assert fronts.goal(frame([dense, (1, "span_pyramid", True, 0.88, 0.85, 3e6)])).startswith("short by 4.0 points")
    assert fronts.goal(frame([dense, (1, "span_pyramid", True, 0.95, 0.95, 4e6)])).startswith("no sparse trial")


def test_hypervolume_is_normalised_by_the_box() -> None:
    assert fronts.hv(frame([(0, "dense_cnn", False, 0.5, 0.5, 5e6)]), 1e7) == 0.25
    assert fronts.hv(frame([]), 1e7) == 0.0


def test_in_short_names_each_run_and_the_last_verdict() -> None:
    text = fronts.in_short([["before", 24, "0.9008"], ["after", 24, "0.9055"]],
                           ["- before: short by 5.5 points: x.", "- after: met: y."])
    assert "before 0.9008, after 0.9055" in text and text.endswith("after: met: y.")


def test_the_front_says_where_downscaled_dense_models_sit() -> None:
    trials = frame([(0, "dense_cnn", False, 0.90, 0.89, 9e6), (1, "dense_vit", False, 0.70, 0.69, 0.4e6),
                    (2, "span_pyramid", True, 0.60, 0.58, 0.3e6), (3, "span_pyramid", True, 0.50, 0.50, 2e6)])
    trials = trials.assign(state="COMPLETE", feasible=True, **{fronts.INPUT_COLUMN: [64, 24, 32, 64]})
    members = fronts.front_members(trials)
    assert [m[0] for m in members] == ["#2", "#1", "#0"]  # #3 is dominated; cheapest first
    assert members[1][3] == "24 px"
    text = fronts.downscaled_dense("after", members, 64)
    assert "dense_vit #1 at 24 px" in text and "dense_cnn" not in text  # #0 sees the full 64 px
    assert text.endswith("1 of its 1 sparse front members are cheaper than the cheapest of them")
    assert fronts.downscaled_dense("x", members[:1], 64).startswith("No dense model")
