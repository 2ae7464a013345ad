"""The ``**In short:**`` paragraph of each benchmark section follows its figures: two hand-made results with
opposite conclusions must give sentences that say opposite things, with the numbers they were built from."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_data  # noqa: E402
import bench_export  # noqa: E402
import bench_models  # noqa: E402
import bench_overhead  # noqa: E402
import bench_report  # noqa: E402
import bench_search_efficiency  # noqa: E402


def one_paragraph(text: str) -> str:
    assert text.startswith("**In short:** ") and "\n" not in text
    sentences = text.removeprefix("**In short:** ").count(". ") + 1
    assert 1 <= sentences <= 3, text
    return text


# --- models -------------------------------------------------------------------------------------------------

def model_rows(size: int, sparse_ms: tuple[float, float]) -> list[dict]:
    """dense_cnn at 1.0 ms (batch 1) / 0.5 ms (batch 256); one sparse model at 0.1x its FLOPs, one at 2x."""
    return [
        {"strategy": "dense_cnn", "size": size, "sparse": False, "flops": 10e6, "ms_b1": 1.0, "ms_b256": 0.5},
        {"strategy": "dense_vit", "size": size, "sparse": False, "flops": 5e6, "ms_b1": 0.5, "ms_b256": 0.25},
        {"strategy": "tnet_traversal", "size": size, "sparse": True, "flops": 1e6,
         "ms_b1": sparse_ms[0], "ms_b256": sparse_ms[1]},
        {"strategy": "sparse_topk", "size": size, "sparse": True, "flops": 20e6, "ms_b1": 3.0, "ms_b256": 1.0},
    ]


def test_models_says_which_flops_savings_become_time_savings():
    slow_then_fast = one_paragraph(bench_models.in_short(model_rows(28, (1.5, 0.1))))
    assert "At 28 px tnet_traversal needs 0.10x the FLOPs of dense_cnn" in slow_then_fast
    assert "at batch 1 it is slower (1.50x the time)" in slow_then_fast
    assert "at batch 256 it is faster (0.20x)" in slow_then_fast
    assert "sparse_topk needs more FLOPs than dense_cnn (2.00x)" in slow_then_fast
    assert "dense_vit" not in slow_then_fast

    fast_then_slow = one_paragraph(bench_models.in_short(model_rows(64, (0.8, 0.6))))
    assert "at batch 1 it is faster (0.80x the time)" in fast_then_slow
    assert "at batch 256 it is slower (1.20x)" in fast_then_slow


def test_models_one_sentence_per_size_and_mixed_verdicts():
    rows = model_rows(28, (1.5, 0.1)) + model_rows(64, (0.8, 0.6))
    rows.append({"strategy": "span_pyramid", "size": 64, "sparse": True, "flops": 0.5e6, "ms_b1": 1.2, "ms_b256": 0.1})
    text = one_paragraph(bench_models.in_short(rows))
    assert text.index("At 28 px") < text.index("At 64 px")
    assert ("At 64 px tnet_traversal and span_pyramid need 0.10x, 0.05x the FLOPs of dense_cnn; at batch 1 "
            "tnet_traversal is faster (0.80x the time), span_pyramid slower (1.20x the time)") in text
    assert "at batch 256 span_pyramid is faster (0.20x), tnet_traversal slower (1.20x)" in text


# --- data ---------------------------------------------------------------------------------------------------

def data_rows(wall_s: float) -> list[dict]:
    return [{"what": "generate", "wall_s": wall_s, "cpu_s": 1.0, "kind": "generate", "n": 10_000,
             "modality": "brightfield", "size": 32},
            {"what": "generate", "wall_s": 2 * wall_s, "cpu_s": 1.0, "kind": "generate", "n": 10_000,
             "modality": "event", "size": 64}]


def test_data_reports_rates_load_time_and_accuracy_when_measured():
    full = {"timings": data_rows(5.0) + [{"what": "load", "wall_s": 0.63, "cpu_s": 0.6, "kind": "load", "n": 17_092}],
            "cnn_val_accuracy": {"brightfield": 0.919, "opd": 0.778}, "chance": 0.2}
    text = one_paragraph(bench_data.in_short(full))
    assert "2,000 images/s (brightfield, 32 px) and 1,000 (event, 64 px)" in text
    assert "loading pbc28.npz (17,092 images) takes 0.63 s" in text.lower()
    assert "0.92 on brightfield and 0.78 on opd (chance 0.20)" in text

    quick = one_paragraph(bench_data.in_short({"timings": data_rows(20.0)}))
    assert "500 images/s (brightfield, 32 px) and 250 (event, 64 px)" in quick
    assert "pbc28" not in quick and "CNN" not in quick


# --- report -------------------------------------------------------------------------------------------------

def test_report_says_size_time_and_whether_within_the_targets():
    good = one_paragraph(bench_report.in_short([
        {"trials": 12, "size_mb": 4.95, "build_s": 1.38, "cli_s": 5.28},
        {"trials": 200, "size_mb": 5.21, "build_s": 2.13, "cli_s": 5.09},
    ]))
    assert "A 200-trial report is 5.21 MB and builds in 2.1 s (5.1 s as a cold command), within both targets" in good
    assert "most of the size is fixed (1.4 kB per extra trial)" in good

    bad = one_paragraph(bench_report.in_short([
        {"trials": 10, "size_mb": 0.5, "build_s": 1.0, "cli_s": 3.0},
        {"trials": 210, "size_mb": 12.5, "build_s": 9.0, "cli_s": 12.0},
    ]))
    assert "12.50 MB" in bad and "within the time target but over the size one" in bad
    assert "the size grows with the trials (60.0 kB per extra trial)" in bad


# --- overhead -----------------------------------------------------------------------------------------------

def overhead_rows(par_steady_s: float, par_wall_s: float) -> list[dict]:
    return [
        {"backend": "optuna", "concurrent": 1, "trials": 6, "wall_s": 64.0, "overhead_per_trial_s": 0.2,
         "steady_overhead_s": 0.0, "first_trial_extra_s": 0.0, "fixed_s": 1.1, "steady_s_per_trial": 10.5},
        {"backend": "ray", "concurrent": 1, "trials": 6, "wall_s": 80.0, "overhead_per_trial_s": 2.0,
         "steady_overhead_s": 0.03, "first_trial_extra_s": 4.0, "fixed_s": 7.7, "steady_s_per_trial": 10.0},
        {"backend": "ray", "concurrent": 2, "trials": 6, "wall_s": par_wall_s, "overhead_per_trial_s": None,
         "steady_overhead_s": 0.03, "first_trial_extra_s": 4.2, "fixed_s": 5.4, "steady_s_per_trial": par_steady_s},
    ]


def test_overhead_reports_cost_per_backend_and_speed_up_against_the_target():
    good = one_paragraph(bench_overhead.in_short(overhead_rows(5.0, 50.0), available=2.03))
    assert "0.20 s per trial with the optuna backend and 2.00 s per trial with the ray backend" in good
    assert "0.03 s of it recurs every trial" in good and "4.0 s for the first trial, 7.7 s fixed" in good
    assert "2.00x as fast as one at a time in steady state and 1.60x as fast end to end" in good
    assert "the 1.7x target met in steady state only" in good and "allowed 2.03x" in good

    bad = one_paragraph(bench_overhead.in_short(overhead_rows(12.5, 100.0), available=1.1))
    assert "0.80x as fast (slower) as one at a time in steady state and 0.80x as fast (slower) end to end" in bad
    assert "both below the 1.7x target" in bad and "allowed 1.10x" in bad


# --- export -------------------------------------------------------------------------------------------------

def rates(table: dict[tuple[str, int], tuple[float, float]]) -> list[dict]:
    return [{"runtime": rt, "threads": th, "batch": b, "images_per_s": v}
            for (rt, th), pair in table.items() for b, v in zip((1, 256), pair, strict=True)]


KNEE = {"strategy": "tnet_traversal", "accuracy": 0.622}
DENSE = {"strategy": "dense_cnn", "accuracy": 0.784}


def test_export_compares_the_knee_model_with_the_target_and_the_dense_model():
    knee = rates({("onnxruntime", 1): (3_495, 4_451), ("torch eager", 1): (696, 16_320)})
    dense = rates({("onnxruntime", 1): (11_849, 12_262), ("torch eager", 2): (884, 1_776)})
    fast = one_paragraph(bench_export.in_short([("knee", KNEE, knee), ("best dense", DENSE, dense)]))
    assert ("The knee model (tnet_traversal, val 0.62) reaches 16,320 images/s at best (torch eager, 1 thread, "
            "batch 256): 1.63x the 10,000 cells/s target (above it)") in fast
    assert "12,262 at best (onnxruntime, 1 thread, batch 256), so the knee model is faster (1.33x its rate)" in fast
    assert "At batch 1 it is slower (0.29x its rate): 3,495 images/s against 11,849" in fast

    knee = rates({("onnxruntime", 2): (2_000, 4_000)})
    slow = one_paragraph(bench_export.in_short([("knee", KNEE, knee), ("best dense", DENSE, dense)]))
    assert "4,000 images/s at best (onnxruntime, 2 threads, batch 256): 0.40x the 10,000 cells/s target (short of it)" in slow
    assert "the knee model is slower (0.33x its rate)" in slow

    alone = one_paragraph(bench_export.in_short([("knee", KNEE, knee)]))
    assert "no complete dense trial" in alone


# --- search efficiency --------------------------------------------------------------------------------------

def hv_runs(finals: dict[str, list[float]]) -> list[dict]:
    return [{"sampler": s, "seed": i, "hv_by_trial": [0.1, 0.2, v]} for s, vs in finals.items() for i, v in enumerate(vs)]


def test_search_efficiency_says_whether_a_sampler_stands_apart_from_seed_noise():
    samplers = ["random", "tpe", "nsga2"]
    noisy = one_paragraph(bench_search_efficiency.in_short(
        hv_runs({"random": [0.44, 0.54], "tpe": [0.47, 0.51], "nsga2": [0.48, 0.52]}), samplers, 3))
    assert "after 3 trials" in noisy and "over 2 seeds" in noisy
    assert "random 0.490 ± 0.071, tpe 0.490 ± 0.028 and nsga2 0.500 ± 0.028" in noisy
    assert "No sampler stands apart" in noisy and "0.010" in noisy and "sd up to 0.071" in noisy

    clear = one_paragraph(bench_search_efficiency.in_short(
        hv_runs({"random": [0.44, 0.46], "tpe": [0.60, 0.62], "nsga2": [0.50, 0.52]}), samplers, 3))
    assert "One sampler stands apart: tpe leads nsga2 by 0.100, more than the largest spread between seeds (sd 0.014)" in clear
