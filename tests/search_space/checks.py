"""Checks the strategy tests share: torch.export and ONNX give the eval model's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from runner.artefacts import onnx_runner
from runner.export.exporters import save_onnx, to_exported_program


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
