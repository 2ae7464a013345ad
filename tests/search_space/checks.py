"""Checks the strategy tests share: a training step reaches what it should, torch.export and ONNX
give the eval model's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runner.engine.artefacts import onnx_runner
from runner.engine.exporters import save_onnx, to_exported_program


def assert_trains(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, *,
                  every_parameter: bool = False) -> None:
    """One training step: finite (B, classes) logits and loss (with the auxiliary loss), and with
    ``every_parameter`` a gradient at every parameter."""
    logits = model(x)
    assert logits.shape == (len(x), classes) and torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters() if every_parameter else ():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def assert_exports_exactly(model: torch.nn.Module, images: torch.Tensor) -> None:
    """``torch.export`` of the eval model returns its logits on ``images``."""
    exported = torch.export.export(model, (images,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(images), model(images))


def assert_onnx_matches(model: torch.nn.Module, example: torch.Tensor, batches: list[torch.Tensor], path: Path,
                        *, atol: float = 1e-4, rtol: float = 0.0) -> None:
    """The ONNX file of ``model`` (exported with a dynamic batch from ``example``) gives its logits on
    every batch, within ``atol + rtol * |logit|``."""
    save_onnx(to_exported_program(model, example), path, {})
    run = onnx_runner(path)
    for x in batches:
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(run(x.numpy()), want, atol=atol, rtol=rtol)
