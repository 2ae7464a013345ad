"""The deploy runtimes a trial's ``throughput`` is timed on, made from the space's ``deploy`` section.

The objective (``objectives.throughput``) knows how to time and calibrate but not how to export:
that lives here, in the engine, with the exporters. :func:`deployment_for` turns ``deploy`` into an
``objectives.Deployment`` whose ``prepare`` exports the model as ``runner.export`` does and loads it
back through the loaders export and predict use (``runner.engine.artefacts``):

* ``pt2``: ``torch.export`` with a dynamic batch, saved as .pt2 and loaded back (never unpickled);
  on CUDA run through ``torch.compile`` (CUDA graphs), the compiled path export and predict offer;
* ``onnxruntime``: the same program translated to ONNX and run in an onnxruntime session with
  ``deploy.threads`` intra-op threads (CUDA provider first on CUDA);
* ``eager``: the module as it trains, in eval mode.

The files live in a temporary folder only while the runtime loads them. A trial process calls
:func:`use_space_deployment` once; the budget check (``min_throughput``) does the same in the driver.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from objectives.throughput import Deployment, Run, eager_prepare, use_deployment
from runner.engine.artefacts import onnx_runner, pt2_runner
from runner.engine.exporters import check_onnx_packages, save_onnx, save_pt2, to_exported_program
from search_space.spec import DeploySpec, SearchSpace


def _program(model: nn.Module, batch: torch.Tensor) -> torch.export.ExportedProgram:
    return to_exported_program(model, batch[: min(2, len(batch))])


def _bound(run: object, batch: torch.Tensor) -> Run:
    """A file runner (numpy in, numpy out) bound to ``batch``: the host copy is made once, outside the timing."""
    x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
    return lambda: run(x)  # type: ignore[operator]


def pt2_prepare(model: nn.Module, batch: torch.Tensor, threads: int) -> Run:
    """The model as a .pt2 file runs it: exported, saved, loaded back; compiled on CUDA."""
    device = "cuda" if batch.is_cuda else "cpu"
    program = _program(model, batch)
    with tempfile.TemporaryDirectory(prefix="cellsparse-deploy-") as folder:
        path = Path(folder) / "model.pt2"
        save_pt2(program, path, "{}")
        run = pt2_runner(path, device=device, compiled=device == "cuda")
    return _bound(run, batch)


def onnx_prepare(model: nn.Module, batch: torch.Tensor, threads: int) -> Run:
    """The model as its ONNX file runs in onnxruntime, with ``threads`` intra-op threads."""
    check_onnx_packages()
    device = "cuda" if batch.is_cuda else "cpu"
    program = _program(model, batch)
    with tempfile.TemporaryDirectory(prefix="cellsparse-deploy-") as folder:
        path = Path(folder) / "model.onnx"
        save_onnx(program, path, {})
        run = onnx_runner(path, device=device, threads=threads)
    return _bound(run, batch)


#: ``deploy.runtime`` -> how a model is made into that runtime (the names are ``spec.DEPLOY_RUNTIMES``).
PREPARE = {"pt2": pt2_prepare, "onnxruntime": onnx_prepare, "eager": eager_prepare}


def deployment_for(spec: DeploySpec, device: str = "cpu") -> Deployment:
    """The ``Deployment`` the throughput objective times with, from a space's ``deploy`` section."""
    return Deployment(runtime=spec.runtime, batch_size=spec.batch_size, threads=spec.threads, device=device,
                      prepare=PREPARE[spec.runtime])


def trial_device(space: SearchSpace) -> str:
    """Where the space's trials run: CUDA when it gives them a GPU and torch sees one."""
    return "cuda" if space.search.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"


def use_space_deployment(space: SearchSpace, device: str | None = None) -> None:
    """Time ``throughput`` in this process as the space's ``deploy`` section says (on ``device``,
    default: where its trials run)."""
    use_deployment(deployment_for(space.deploy, device or trial_device(space)))
