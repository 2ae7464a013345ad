"""What every registered strategy does with its default config, whatever it is."""

from __future__ import annotations

import pytest
import torch

from search_space.build import build_model, default_config
from search_space.strategies import get_strategy, strategy_names

BUILT_IN = [name for name in strategy_names() if get_strategy(name).model.__module__.startswith("search_space.")]


@pytest.mark.parametrize("size", [16, 128])
@pytest.mark.parametrize("strategy", BUILT_IN)
def test_smallest_and_largest_images(strategy: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(default_config(strategy), 2, 4, size).eval()
    x = torch.rand(2, 2, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 4)
    used = model.used_map(x)
    assert used.shape == (2, size, size) and used.min() >= 0 and used.max() <= 1
    assert model.analytic_flops(x) > 0
