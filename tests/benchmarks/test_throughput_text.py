"""bench_throughput's verdict follows its figures: the rank agreement and the cost against their targets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_throughput as B  # noqa: E402


def text(rho_front: float, share: float, front: int = 5) -> str:
    rho = {("front", "raw"): rho_front, ("front", "calibrated"): 0.5, ("all", "raw"): 0.3, ("all", "calibrated"): 0.4}
    return B.in_short(trials=14, epochs=3, front=front, trained=12, rho=rho, rel={"calibrated": 0.05, "raw": 0.3},
                      measure_s=2.0, share=share, worst=share * 2, onnx_s=None, onnx_share=None)


def test_verdicts_follow_the_figures():
    good, bad = text(0.95, 0.02), text(0.6, 0.09)
    assert "0.95 as recorded by default (uncalibrated: meets the 0.9 target)" in good
    assert "2.0% of a default 10-epoch trial, within" in good
    assert "0.60 as recorded by default (uncalibrated: misses the 0.9 target)" in bad
    assert "9.0% of a default 10-epoch trial, over" in bad
    few = text(1.0, 0.02, front=2)  # two front points always rank perfectly: the verdict is on all trials
    assert "the 12 trained trials rank with Spearman 0.30 as recorded by default (uncalibrated: misses" in few


def test_spearman_is_the_rank_correlation():
    assert B.spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 400])) == 1.0
    assert B.spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == -1.0
    assert np.isnan(B.spearman(np.array([1.0]), np.array([2.0])))


def test_pairs_far_apart_are_judged_and_near_ties_are_not():
    recorded = np.array([100.0, 105.0, 200.0, 400.0])
    again = np.array([104.0, 101.0, 190.0, 150.0])  # the near tie swaps (not judged); 200 and 400 swap (judged)
    assert B.concordant_pairs(recorded, again, 0.25) == (4, 5)
    assert "of the trained trials' pairs more than 25% apart, 4 of 5 kept their order" in B.in_short(
        trials=4, epochs=3, front=4, trained=4, rho={(s, k): 0.8 for s in ("front", "all") for k in ("raw", "calibrated")},
        rel={"calibrated": 0.1, "raw": 0.1}, measure_s=0.5, share=0.04, worst=0.05, onnx_s=None, onnx_share=None,
        pairs=(4, 5))
