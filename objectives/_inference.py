"""Run a model the way it is deployed: eval mode, no autograd, its own modes restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``no_grad`` inside; every submodule's own train/eval flag restored on exit.

    Restoring per submodule (not ``model.train(was_training)``) keeps a deliberately frozen part,
    such as a BatchNorm left in eval inside a training model, as the trainer set it.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
