"""The real-cells section's verdicts follow the figures: the bar met or not, and which model it is judged on."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_real_cells as real  # noqa: E402

from tests.benchmarks.test_front import trials  # noqa: E402


def test_bar_met_by_the_cheapest_passing_front_model():
    frame = trials([(0, "dense_cnn", 0.970, 0.968, 5.0), (1, "dense_cnn", 0.975, 0.970, 9.0),
                    (2, "tnet_traversal", 0.90, 0.90, 1.0)])
    assert int(real.bar_pick(frame)["number"]) == 0
    text = real.in_short(frame, 0.5)
    assert "the front holds a model above the 96.60% bar" in text and "96.80% test at 5.00 MFLOPs" in text
    assert real.bar_verdict(frame).startswith("**Met.**")


def test_bar_not_met_names_the_best_model_within_budget_and_an_off_front_passer():
    frame = trials([(0, "dense_cnn", 0.960, 0.967, 5.0), (1, "dense_cnn", 0.965, 0.955, 4.0),
                    (2, "dense_cnn", 0.990, 0.990, 50.0)])
    assert int(real.bar_pick(frame)["number"]) == 1   # most accurate on validation within 10 MFLOPs
    assert "is not met" in real.in_short(frame, None)
    verdict = real.bar_verdict(frame)
    assert verdict.startswith("**Not met.**") and "#0 dense_cnn" in verdict  # test passes, validation does not pick it


def test_seed_text_reports_mean_spread_and_count_above_the_bar():
    rows = [{"seed": 3, "val": 0.97, "test": 0.970}, {"seed": 1003, "val": 0.96, "test": 0.960}]
    text = real.seed_text(rows)
    assert "test 96.50% +- 0.71 points" in text and "1 of 2 seeds at or above 96.60%" in text
    assert real.seed_text(None) == ""
