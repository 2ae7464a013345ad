"""The GPU benchmark without a GPU: its derived spaces are valid, its rates follow the trial times, its
sentences follow the figures, and on a machine without CUDA it measures and writes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_gpu as gpu  # noqa: E402

from search_space.spec import load_space  # noqa: E402

ROOT = BENCH.parent


def packing(per_gpu: int, rate: float) -> dict:
    return {"per_gpu": per_gpu, "complete": 8, "wall_s": 60.0, "span_s": 30.0, "mean_trial_s": 3.0,
            "steady_trials_per_hour": rate, "trials_per_hour": rate / 2, "trials_asked": 8, "epochs": 2,
            "mean_val_accuracy": 0.93}


def results(rate_packed: float) -> dict:
    trial = {"number": 0, "state": "COMPLETE", "feasible": True, "strategy": "dense_cnn", "accuracy": 0.97,
             "test_accuracy": 0.96, "flops": 5e6, "params_count": 19_888, "duration_s": 30.0, "error": None,
             "used_fraction": 1.0}
    return {
        "machine": {"gpu": "Test GPU", "gpu_memory_gib": 80.0, "cuda": "12.0", "torch": "2.x", "cpus": 16,
                    "python": "3.12", "date": "2026-01-01"},
        "search": {"wall_s": 120.0, "span_s": 100.0, "states": {"COMPLETE": 1}, "complete": 1, "trials_per_hour": 30.0,
                   "steady_trials_per_hour": 36.0, "mean_trial_s": 30.0, "trials": [trial], "per_gpu": 8,
                   "cpus_per_trial": 2, "limit_s": 180.0, "command": "python -m runner.search ..."},
        "throughput": [{"role": "knee", "trial": 0, "strategy": "dense_cnn", "val_accuracy": 0.97, "test_accuracy": 0.96,
                        "flops": 5e6, "runtime": "torch eager", "batch": b, "images_per_s": r}
                       for b, r in ((1, 500.0), (256, 50_000.0))],
        "packing": [packing(1, 800.0), packing(8, rate_packed)],
    }


def test_in_short_follows_the_packing_figures():
    faster, slower = gpu.in_short(results(1200.0)), gpu.in_short(results(400.0))
    assert "finished more trials per hour than one at a time (1.50x)" in faster
    assert "finished fewer trials per hour than one at a time (0.50x)" in slower
    assert "30 trials per hour with 8 trials sharing the GPU" in faster
    assert "50,000 images/s (torch eager, batch 256)" in faster


def test_render_names_the_machine_and_every_part():
    text = gpu.render(results(1200.0), None, "python benchmarks/bench_gpu.py")
    assert text.startswith("Machine: Test GPU (80.0 GiB), 16 CPUs")
    for part in ("### The real-cells search on the GPU", "### Exported-model throughput on the GPU",
                 "### Several trials per GPU (fractional GPUs)"):
        assert part in text
    assert "| 8 | 0.125 | 8 |" in text and "1.50x" in text


def test_search_figures_take_rates_from_the_trial_times(tmp_path: Path):
    rows = [
        {"number": 0, "state": "COMPLETE", "duration_s": 10.0,
         "datetime_start": "2026-01-01T00:00:00", "datetime_complete": "2026-01-01T00:00:10"},
        {"number": 1, "state": "COMPLETE", "duration_s": 20.0,
         "datetime_start": "2026-01-01T00:00:05", "datetime_complete": "2026-01-01T00:00:25"},
        {"number": 2, "state": "FAIL", "duration_s": 5.0,
         "datetime_start": "2026-01-01T00:00:20", "datetime_complete": "2026-01-01T00:00:30"},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "trials.csv", index=False)
    figures = gpu.search_figures(tmp_path, wall_s=60.0)
    assert figures["complete"] == 2 and figures["span_s"] == pytest.approx(30.0)
    assert figures["trials_per_hour"] == pytest.approx(120.0)         # 2 complete in 60 s of wall time
    assert figures["steady_trials_per_hour"] == pytest.approx(240.0)  # 2 complete in the 30 s the trials spanned
    assert figures["mean_trial_s"] == pytest.approx(15.0)


def test_derived_spaces_are_valid(tmp_path: Path):
    data = tmp_path / "pbc28.npz"
    data.write_bytes(b"")
    search = load_space(gpu.derived_space(tmp_path, "real", data, {"search": {"timeout_s": 90}}))
    assert search.search.timeout_s == 90 and search.search.trials == 24 and len(search.model.strategy_names) == 5
    assert Path(search.data.path) == data
    edit = {"training": {"epochs": 2, "lr": 0.004},
            "search": {"trials": 8, "sampler": {"name": "random", "seed": 0}, "timeout_s": None},
            "space": {"shared": {}, "strategy": {"dense_cnn": dict(gpu.PACKING_CONFIG)}}}
    packed = load_space(gpu.derived_space(tmp_path, "packing", data, edit))
    assert packed.model.strategy_names == ["dense_cnn"] and packed.search.timeout_s is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_measures_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    doc = ROOT / "docs" / "benchmarks.md"
    before = doc.read_text()
    assert gpu.main(["--json", str(tmp_path / "gpu.json")]) == 0
    assert "skipped: torch sees no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists() and doc.read_text() == before


def test_the_committed_figures_render(capsys: pytest.CaptureFixture[str]):
    saved = ROOT / "docs" / "bench_gpu.json"
    assert gpu.main(["--from-json", str(saved), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert json.loads(saved.read_text())["machine"]["gpu"] in out and "trials per hour" in out


def test_cpu_and_gpu_trials_are_matched_only_where_the_configs_agree():
    def row(number: int, lr: float, width: float | None) -> dict:
        return {"number": number, "state": "COMPLETE", "strategy": "dense_cnn", "config.lr": lr, "config.width": width}

    cpu = pd.DataFrame([row(0, 0.004702243567771814, 16), row(1, 0.003, 16), row(2, 0.002, None)])
    on_gpu = pd.DataFrame([row(0, 0.0047022436, 16.0), row(1, 0.003, 24), row(2, 0.002, None)])  # 10 digits, as saved
    assert sorted(int(n) for n in gpu._same_configs(cpu, on_gpu)["number"]) == [0, 2]

