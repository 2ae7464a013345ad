"""The selection benchmark's measure and sentences follow its figures."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_selection as sel  # noqa: E402


def test_the_share_on_the_cell_is_mass_weighted() -> None:
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0  # a quarter of the frame
    used = torch.zeros(1, 4, 4)
    used[0, 0, 0], used[0, 3, 3] = 3.0, 1.0
    inside, random = sel.selection_share(used, mask)
    assert inside == 0.75 and random == 0.25


def row(label: str, ratio: float, acc: float) -> dict:
    return {"label": label, "ratio": ratio, "val_accuracy": acc}


def test_the_verdict_follows_the_ratios() -> None:
    text = sel.in_short([row("tnet_traversal", 2.3, 0.66), row("tnet_traversal, no REINFORCE", 1.0, 0.64),
                         row("span_pyramid", 1.5, 0.78)])
    assert "Of the sparse strategies, tnet_traversal put" in text and "span_pyramid (1.50x) fall short" in text
    assert "tnet_traversal's share on the cell is higher: 2.30x against 1.00x" in text
    flipped = sel.in_short([row("tnet_traversal", 0.9, 0.66), row("tnet_traversal, no REINFORCE", 1.0, 0.64)])
    assert "No sparse strategy" in flipped and "is not higher" in flipped
