"""The headroom benchmark's arithmetic: the interval, the ground-truth crop, the table and the verdict,
and the 512-px benchmark's space (through the real validator)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_fields512 as fields512  # noqa: E402
import bench_headroom as headroom  # noqa: E402

from search_space.spec import load_space  # noqa: E402


def test_interval_is_the_t_interval_of_the_mean() -> None:
    mean, half = headroom.interval([80.0, 82.0, 84.0])
    assert mean == pytest.approx(82.0) and half == pytest.approx(4.30 * 2.0 / 3**0.5, rel=1e-3)
    assert headroom.interval([70.0]) == (70.0, 0.0)


def test_the_crop_is_centred_on_the_target_and_clamped_to_the_frame() -> None:
    images = torch.arange(2 * 1 * 10 * 10, dtype=torch.uint8).view(2, 1, 10, 10)
    boxes = torch.tensor([[5.0, 5.0, 2.0], [0.0, 9.0, 2.0]])  # x, y, radius: the second at a corner
    crops = headroom.crop_around_target(images, boxes, 4)
    assert torch.equal(crops[0], images[0, :, 3:7, 3:7])
    assert torch.equal(crops[1], images[1, :, 6:10, 0:4])


def run(variant: str, seed: int, test: float) -> dict:
    return {"set": "fields", "variant": variant, "seed": seed, "input": 64, "frame": 256, "flops": 2e6, "val": test,
            "test": test, "tail": [test - 0.01, test], "seconds": 10.0}


def test_the_table_measures_each_shrink_against_native() -> None:
    results = [run("native", s, t) for s, t in enumerate([0.80, 0.82, 0.84])]
    results += [run("shrink 4x", s, t) for s, t in enumerate([0.60, 0.62, 0.64])]
    table, drops = headroom.summarise(results)
    assert drops["shrink 4x"] == pytest.approx(20.0)
    assert "-20.0" in table and "82.0 ± 5.0" in table
    assert "meets" in headroom.verdict("fields", drops)
    assert "not in the regime" in headroom.verdict("npz:x.npz", {"shrink 4x": 2.9})
    assert "in the regime where" in headroom.verdict("npz:x.npz", {"shrink 4x": 3.0})
    assert "2.0 test points more accurate than native" in headroom.verdict("npz:x.npz", {"shrink 4x": -2.0})


def test_the_512_space_is_valid(tmp_path: Path) -> None:
    args = argparse.Namespace(size=512, train=20, val=10, epochs=1, trials=2)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(fields512.space_for(args), sort_keys=False))
    space = load_space(path)
    assert space.data.image_size == 512 and space.data.layout == "field" and space.search.backend == "optuna"
    assert set(space.model.strategy_names) == {"sparse_topk", "tnet_traversal", "span_pyramid", "dense_cnn", "dense_vit"}


def test_the_section_joins_saved_invocations() -> None:
    settings = {"sets": ["fields"], "size": 256, "target": 32, "difficulty": 0.3, "epochs": 12, "train": 0, "jobs": 2,
                "threads": 1}
    saved = {"stamp": "Machine: m. Command: `c`.", "settings": settings, "wall_s": 600.0,
             "results": [run("native", 0, 0.8), run("shrink 4x", 0, 0.7)]}
    real = {**saved, "settings": {**settings, "sets": ["npz:/x/wbc.npz"], "train": 1500},
            "results": [{**r, "set": "npz:/x/wbc.npz"} for r in (run("native", 0, 0.8), run("shrink 4x", 0, 0.79))]}
    text = headroom.section([saved, real])
    assert "Synthetic fields (256 px, target 32 px" in text and "`wbc.npz`" in text
    assert "meets the 5-point target" in text and "not in the regime" in text and "train capped at 1500" in text
