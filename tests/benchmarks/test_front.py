"""The helpers the benchmark sections are computed with: content share, budget picks, sparse-vs-dense
verdicts, and the run_all plan covering every benchmark script."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _front  # noqa: E402
import run_all  # noqa: E402


def test_content_fraction_counts_pixels_off_the_border_colour():
    images = torch.full((2, 3, 8, 8), 0.9)
    images[0, :, 2:6, 2:6] = 0.2          # 16 of 64 pixels: content
    images[0, 1, 0, 4] = 0.85             # within the threshold of the background: not content
    images[1, 0, 3, 3] = 0.5              # one channel off is enough: 1 of 64 pixels
    assert _front.content_fraction(images) == pytest.approx((16 / 64 + 1 / 64) / 2)


def test_raw_images_undo_the_normalisation():
    from runner.data import load_dataset

    data = load_dataset(source="synthetic", image_size=32, train=20, val=10, test=1, seed=0)
    raw = _front.raw_images(data)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5       # brightfield is stored in [0, 1]
    assert abs(float(raw.mean()) - float(data.images("val").mean())) > 0.1  # not the normalised model input


def trials(rows: list[tuple[int, str, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"number": n, "strategy": s, "accuracy": a, "test_accuracy": t, "flops": f * 1e6,
                          "state": "COMPLETE", "feasible": True, "params_count": 1, "duration_s": 60.0}
                         for n, s, a, t, f in rows])


def test_best_in_picks_by_validation_within_the_budget_and_by_family():
    frame = trials([(0, "dense_cnn", 0.90, 0.95, 4.0), (1, "tnet_traversal", 0.92, 0.80, 6.0),
                    (2, "span_pyramid", 0.92, 0.81, 3.0), (3, "dense_vit", 0.99, 0.99, 50.0)])
    assert int(_front.best_in(frame, 5)["number"]) == 2          # tie on validation: fewer FLOPs
    assert int(_front.best_in(frame, 5, _front.DENSE)["number"]) == 0
    assert int(_front.best_in(frame, 100)["number"]) == 3
    assert _front.best_in(frame, 1) is None


def test_sparse_vs_dense_counts_wins_against_brute_force(tmp_path: Path):
    frame = trials([(0, "dense_cnn", 0.80, 0.80, 1.5), (1, "tnet_traversal", 0.85, 0.84, 1.0),
                    (2, "dense_cnn", 0.95, 0.94, 8.0), (3, "span_pyramid", 0.90, 0.90, 4.0),
                    (4, "sparse_topk", 0.70, 0.70, 0.5)])
    budgets = (1, 2, 5, 10)
    text = _front.sparse_vs_dense(tmp_path, frame, budgets, "Here")
    wins = contests = 0
    for b in budgets:
        within = frame[frame["flops"] <= b * 1e6]
        s = within[within["strategy"].isin(_front.SPARSE)]["accuracy"].max()
        d = within[within["strategy"].isin(_front.DENSE)]["accuracy"].max()
        if pd.notna(s) and pd.notna(d):
            contests += 1
            wins += s > d
    front_sparse = int(_front.front(frame)["strategy"].isin(_front.SPARSE).sum())
    assert (wins, contests, front_sparse) == (2, 3, 3)
    assert f"sparse strategies hold {front_sparse} of the 4 front points" in text
    assert f"beats the best dense one in {wins} of the {contests} budgets" in text
    assert "<= 1 MFLOPs: only sparse models fit" in text


def test_run_all_plans_every_benchmark_script(tmp_path: Path):
    planned = {Path(cmd[1]).name for _, cmds in run_all.plan(None, tmp_path) for cmd in cmds if cmd[1].endswith(".py")}
    scripts = {p.name for p in BENCH.glob("bench_*.py")}
    assert scripts <= planned, f"not in run_all.py: {sorted(scripts - planned)}"
