"""The adaptive-k benchmark's arithmetic and verdict follow the measured runs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_adaptive_k as bench  # noqa: E402


def run(val: float, flops: float) -> dict:
    return {"val": val, "flops": flops, "k": 10, "seconds": 1.0}


def test_flops_saved_and_accuracy_cost_are_means_over_seeds() -> None:
    pairs = [(run(0.80, 10e6), run(0.79, 5e6)), (run(0.82, 10e6), run(0.80, 6e6))]
    s = bench.summarise(pairs)
    assert abs(s["saved"] - 0.45) < 1e-9
    assert abs(s["cost"] - 1.5) < 1e-9
    assert abs(s["fixed_sd"] - 100 * 0.01414213562) < 1e-6


def test_the_verdict_needs_both_the_saving_and_the_accuracy() -> None:
    setting = (0.03, 0.25)
    met = bench.verdict(setting, {"saved": 0.5, "cost": 0.8, "cost_sd": 0.3, "fixed_sd": 1.0})
    assert met.startswith("k_tolerance 0.03, k_min_fraction 0.25: 50% fewer FLOPs") and met.endswith("target met")
    assert bench.verdict(setting, {"saved": 0.5, "cost": 1.2, "cost_sd": 0.3, "fixed_sd": 1.0}).endswith("target not met")
    assert bench.verdict(setting, {"saved": 0.3, "cost": 0.0, "cost_sd": 0.3, "fixed_sd": 1.0}).endswith("target not met")


def test_the_k_curve_reports_each_fraction_and_its_most_accurate() -> None:
    curve = {0.1: [run(0.86, 20e6), run(0.85, 20e6)], 0.05: [run(0.84, 10e6), run(0.85, 10e6)],
             0.15: [run(0.855, 35e6), run(0.85, 35e6)]}
    rows, peak = bench.curve_table(curve)
    assert peak == 0.1
    assert [r[0] for r in rows] == ["0.05", "0.1", "0.15"]  # cheapest first
    assert rows[0][3] == "84.5%" and rows[0][4] == "84.0%, 85.0%"
