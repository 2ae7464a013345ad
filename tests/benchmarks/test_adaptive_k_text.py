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
    assert bench.verdict(0.03, {"saved": 0.5, "cost": 0.8, "cost_sd": 0.3, "fixed_sd": 1.0}).endswith("target met")
    assert bench.verdict(0.03, {"saved": 0.5, "cost": 1.2, "cost_sd": 0.3, "fixed_sd": 1.0}).endswith("target not met")
    assert bench.verdict(0.03, {"saved": 0.3, "cost": 0.0, "cost_sd": 0.3, "fixed_sd": 1.0}).endswith("target not met")
