"""Every space file shipped in search_space/ loads, and the configs it samples build and run at its image size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search_space.build import build_model
from search_space.sampling import sample_configs
from search_space.spec import load_space

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_space").glob("*.yaml"))


def test_the_shipped_spaces_are_found():
    assert {p.name for p in SPACES} >= {"cells.yaml", "blood_cells.yaml", "cells64.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_sampled_configs_build_and_run(path: Path) -> None:
    space = load_space(path)
    size = space.data.image_size
    channels, classes = 3, len(space.data.class_names or ()) or 5
    configs = sample_configs(space, 12, seed=1)
    assert len({c["strategy"] for c in configs}) >= 3
    for config in configs:
        model = build_model(config, channels, classes, size).eval()
        with torch.no_grad():
            logits = model(torch.rand(2, channels, size, size))
        assert logits.shape == (2, classes), config
        assert torch.isfinite(logits).all(), config
