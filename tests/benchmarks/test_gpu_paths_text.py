"""The GPU-paths benchmark: its committed figures render, its ratios follow them, and without CUDA
it measures and writes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu_paths as paths  # noqa: E402

SAVED = ROOT / "docs" / "bench_gpu_paths.json"


def test_the_committed_figures_render(capsys: pytest.CaptureFixture[str]) -> None:
    assert paths.main(["--from-json", str(SAVED), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert json.loads(SAVED.read_text())["machine"]["gpu"] in out
    assert all(s in out for s in paths.STRATEGIES) and "compiled" in out


def test_speeds_are_the_copied_variant_over_each_variant() -> None:
    saved = json.loads(SAVED.read_text())
    copied, resident, _ = (label for label, _, _ in paths.VARIANTS)
    rows = [r for r in saved["training"] if r["strategy"] == "dense_vit"]
    by = {r["variant"]: r for r in rows}
    ratio = by[copied]["epoch_s"] / by[resident]["epoch_s"]
    assert f"| dense_vit | {resident} | fp32 | 8.14 | {by[resident]['epoch_s']:.2f} |" in paths._training_text(rows)
    assert f"{ratio:.2f}x" in paths._training_text(rows)


def test_compiled_gains_are_against_the_plain_pt2_at_the_same_batch() -> None:
    rows = [{"strategy": "span_pyramid", "flops": 1e6, "runtime": ".pt2", "batch": 256, "images_per_s": 100.0,
             "first_call_s": 1.0},
            {"strategy": "span_pyramid", "flops": 1e6, "runtime": paths.COMPILED, "batch": 256, "images_per_s": 250.0,
             "first_call_s": 20.0}]
    assert "span_pyramid at batch 256 2.50x" in paths._inference_text(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_measures_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    before = doc.read_text()
    assert paths.main(["--json", str(tmp_path / "g.json")]) == 0
    assert "skipped: torch sees no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "g.json").exists() and doc.read_text() == before
