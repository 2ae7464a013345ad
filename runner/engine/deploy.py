"""The deploy runtimes a trial's ``throughput`` is timed on, made from the space's ``deploy`` section.

The objective (``objectives.throughput``) knows how to time and calibrate but not how to export:
that lives here, in the engine, with the exporters. :func:`deployment_for` turns ``deploy`` into an
``objectives.Deployment`` whose ``prepare`` exports the model (as ``runner.export`` does, the pt2
program for the timed batch's shape alone) and runs it through the runners export and predict use
(``runner.engine.artefacts``):

* ``pt2``: the ``torch.export`` program's module, exported for the deploy batch and run from memory
  (the file ``runner.export`` writes has a dynamic batch and is loaded from disk: the same operators,
  checked side by side in the throughput benchmark); on CUDA run through ``torch.compile`` (CUDA
  graphs), the compiled path export and predict offer;
* ``onnxruntime``: the program with a dynamic batch translated to ONNX (the file export writes) and
  run in an onnxruntime session with ``deploy.threads`` intra-op threads (CUDA provider first on CUDA);
* ``eager``: the module as it trains, in eval mode.

An ONNX file lives in a temporary folder only while onnxruntime loads it. A trial process calls
:func:`use_space_deployment` once; the budget check (``min_throughput``) does the same in the driver.

Calibration, once per run: before the first trial the driver times the objective's reference model
alone (:func:`calibrate_run`) on the deploy runtime, and keeps the rate in the run directory
(``deploy_calibration.json``).
Every trial process reads them from there, so all trials of a run are put on one scale, whatever
process, node or session timed them; a resumed session reuses the rates of the same deployment.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cellsparse.files import write_atomic
from cellsparse.rundir import CALIBRATION_FILE
from objectives.throughput import Deployment, Run, eager_prepare, measure_calibration, set_calibration, use_deployment
from runner.engine.artefacts import onnx_runner, program_runner, pt2_runner
from runner.engine.datasets import data_shape
from runner.engine.exporters import check_onnx_packages, save_onnx, save_pt2, to_exported_program
from search_space.spec import DeploySpec, SearchSpace


def _program(model: nn.Module, batch: torch.Tensor) -> torch.export.ExportedProgram:
    return to_exported_program(model, batch[: min(2, len(batch))])


def _bound(run: object, batch: torch.Tensor) -> Run:
    """A file runner (numpy in, numpy out) bound to ``batch``: the host copy is made once, outside the timing."""
    x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
    return lambda: run(x)  # type: ignore[operator]


def pt2_prepare(model: nn.Module, batch: torch.Tensor, threads: int) -> Run:
    """The model as the .pt2 runtime runs it: torch.export's program, its module (compiled on CUDA).

    Exported for the timed batch's shape and run from memory, where the deployed file has a dynamic
    batch and is loaded from disk: the same operators on the same shapes, for about a third of the
    export time and no save and load (docs/benchmarks.md, "Throughput objective", times both on
    every trial of a search: :func:`pt2_file_prepare`)."""
    device = "cuda" if batch.is_cuda else "cpu"
    program = to_exported_program(model, batch, dynamic_batch=False)
    return _bound(program_runner(program, device=device, compiled=device == "cuda"), batch)


def pt2_file_prepare(model: nn.Module, batch: torch.Tensor, threads: int) -> Run:
    """The model as its .pt2 file runs: exported with a dynamic batch, saved, loaded back (what
    ``runner.export`` writes and ``runner.predict`` runs); the reference :func:`pt2_prepare` is checked against."""
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
                      prepare=PREPARE[spec.runtime], calibrate=spec.calibrate)


def trial_device(space: SearchSpace) -> str:
    """Where the space's trials run: CUDA when it gives them a GPU and torch sees one."""
    return "cuda" if space.search.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"


def use_space_deployment(space: SearchSpace, device: str | None = None, run_dir: Path | None = None) -> None:
    """Time ``throughput`` in this process as the space's ``deploy`` section says (on ``device``,
    default: where its trials run), with the run's calibration rates when ``run_dir`` keeps them."""
    use_deployment(deployment_for(space.deploy, device or trial_device(space)))
    if run_dir is not None and times_throughput(space):
        for record in _read_calibrations(Path(run_dir)):
            set_calibration(_from_record(record), record["shape"], record["rate"])


def times_throughput(space: SearchSpace) -> bool:
    """Whether the space's trials time throughput (an objective, or a bound on it)."""
    return "throughput" in space.objective_names or "throughput" in space.constraints.limits


def _record(deployment: Deployment, shape: tuple[int, ...], rate: float) -> dict[str, Any]:
    return {"runtime": deployment.runtime, "shape": list(shape), "threads": deployment.threads,
            "device": deployment.device, "rate": rate}


def _from_record(record: dict[str, Any]) -> Deployment:
    return Deployment(record["runtime"], record["shape"][0], record["threads"], record["device"],
                      prepare=PREPARE[record["runtime"]])


def _read_calibrations(run_dir: Path) -> list[dict[str, Any]]:
    """The records kept in the run directory; none when the file is absent or not this project's."""
    try:
        records = json.loads((run_dir / CALIBRATION_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    keys = {"runtime", "shape", "threads", "device", "rate"}
    return [r for r in records if isinstance(r, dict) and keys <= set(r) and r["runtime"] in PREPARE] \
        if isinstance(records, list) else []


def calibrate_run(space: SearchSpace, run_dir: Path) -> list[dict[str, Any]]:
    """Measure (or reuse) the run's calibration rate and set it in this process; the records.

    The deploy runtime's, at the deploy batch of the data's frames; kept in ``run_dir``. Nothing
    when the space does not time throughput, or times it uncalibrated (``deploy.calibrate: false``,
    the default)."""
    if not times_throughput(space) or not space.deploy.calibrate:
        return []
    in_channels, _, size = data_shape(space)
    shape = (space.deploy.batch_size, in_channels, size, size)
    deployment = deployment_for(space.deploy, trial_device(space))
    records = _read_calibrations(Path(run_dir))
    found = next((r for r in records if _from_record(r).key(r["shape"]) == deployment.key(shape)), None)
    if found is None:
        found = _record(deployment, shape, measure_calibration(deployment, shape))
        records.append(found)
        write_atomic(Path(run_dir) / CALIBRATION_FILE, json.dumps(records, indent=2) + "\n")
    set_calibration(deployment, shape, found["rate"])
    return records
