"""What an export directory holds, named once, and how each model file is loaded to run: export
writes these files and checks them through these loaders, the model card describes them, predict
reads them through the same loaders.

A runner maps a float32 batch (N, C, S, S) to logits (N, classes) as a numpy array.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.export.passes import move_to_device_pass

from cellsparse.errors import UserError
from runner.engine.pt2 import load_program

FORMATS = ("onnx", "pt2")
FILES = {"onnx": "model.onnx", "pt2": "model.pt2"}  # format -> file name
PARITY_FILE = "parity.npz"  # the images and eager logits every format was checked against
CARD_FILE = "model_card.json"
README_FILE = "README.md"
#: What an export wrote (name -> sha256): how a later export tells its own files from anyone else's.
MANIFEST_FILE = ".cellsparse-export.json"
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # the exported graph's input and output

InferenceFn = Callable[[np.ndarray], np.ndarray]


def onnx_runner(path: Path, *, device: str = "cpu", threads: int | None = None) -> InferenceFn:
    """The ONNX file through onnxruntime, on the CPU or (``device="cuda"``) CUDA first; ``threads``
    fixes the intra-op threads (one inter-op thread), None leaves onnxruntime's default."""
    import onnxruntime as ort  # onnxruntime is heavy: only the ONNX format needs it

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda x: session.run([output], {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def pt2_runner(path: Path, *, device: str = "cpu", compiled: bool = False) -> InferenceFn:
    """The .pt2 program, loaded back from disk by ``runner.engine.pt2.load_program`` (never unpickled),
    run as :func:`program_runner` runs it."""
    return program_runner(load_program(path), device=device, compiled=compiled)  # refuses what would unpickle


def program_runner(program: torch.export.ExportedProgram, *, device: str = "cpu",
                   compiled: bool = False) -> InferenceFn:
    """An exported program as the .pt2 runtime runs it: its module on ``device``.

    ``compiled``: run it through ``torch.compile`` (on CUDA in ``reduce-overhead`` mode, which replays
    CUDA graphs: a small batch is bound by kernel launches, not by arithmetic). The first batch size
    seen is kept, shorter batches are padded to it, so a last short batch does not compile again."""
    if device == "cuda":
        # an explicit index: the pass writes its device into the program's metadata checks, and a compiled
        # program compares "cuda" with the inputs' "cuda:0" and fails (seen with torch 2.11 on an H200)
        program = move_to_device_pass(program, torch.device("cuda", torch.cuda.current_device()))
    module = program.module()
    if compiled:
        module = torch.compile(module, mode="reduce-overhead" if device == "cuda" else None, dynamic=False)
    fixed: list[int] = []  # the compiled batch size

    def run(x: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        n = batch.shape[0]
        if compiled:
            if not fixed:
                fixed.append(n)
            if n < fixed[0]:
                batch = torch.cat([batch, batch.new_zeros(fixed[0] - n, *batch.shape[1:])])
        with torch.no_grad():
            return module(batch).float().cpu().numpy()[:n]  # copied out before a CUDA graph replays again

    return run


def check_device(fmt: str, device: str) -> None:
    """UserError when ``fmt`` cannot run on ``device`` here (CUDA without a CUDA runtime)."""
    if device != "cuda":
        return
    if fmt == "onnx":
        import onnxruntime as ort  # onnxruntime is heavy: only the ONNX format needs it

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu), "
                            "or use --format pt2 or --device cpu")
    elif not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to torch here; use --device cpu")
