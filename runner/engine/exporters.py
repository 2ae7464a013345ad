"""The exporters: an eval model to a ``torch.export`` program, saved as .pt2 and translated to ONNX
(with the two translations the ONNX exporter lacks, and attention in the form onnxruntime fuses).

In the engine layer, beside the loaders of the files they write (``runner.engine.artefacts``): the export
command (``runner.export``) writes a run's chosen model with them, and a trial's ``throughput``
objective times its model as exported with them (``runner.engine.deploy``)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cellsparse.errors import UserError
from runner.engine.artefacts import CARD_FILE, INPUT_NAME, OUTPUT_NAME

#: What the ONNX format needs beyond torch: import name -> distribution (pip) name.
ONNX_PACKAGES = {"onnx": "onnx", "onnx_ir": "onnx-ir", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}


def check_onnx_packages() -> None:
    """UserError naming the missing packages, and how to install them, before any work is done."""
    missing = [dist for module, dist in ONNX_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"the onnx format needs {', '.join(ONNX_PACKAGES.values())}, but {', '.join(missing)} "
                        "is not installed; install them with: python -m pip install -e \".[export]\" (in the "
                        f"project folder) or python -m pip install {' '.join(missing)}; or pass --formats pt2")


def _median_dim(self: Any, dim: int, keepdim: bool = False) -> Any:
    """ONNX for ``aten.median.dim`` (the lower median, as torch returns it), which the exporter lacks.

    span_pyramid's foreground score takes the median of the image border. Sort ascending with TopK
    (k = the full length) and take element (n - 1) // 2 with its index.
    """
    from onnxscript import opset18 as op  # onnxscript is heavy: only the ONNX format needs it

    rank = len(self.shape)
    dim = dim + rank if dim < 0 else dim
    n = op.Shape(self, start=dim, end=dim + 1)  # (1,) int64
    values, indices = op.TopK(self, n, axis=dim, largest=0, sorted=1)
    middle = op.Div(op.Sub(n, op.Constant(value_ints=[1])), op.Constant(value_ints=[2]))
    value, index = op.Gather(values, middle, axis=dim), op.Gather(indices, middle, axis=dim)
    if not keepdim:
        axes = op.Constant(value_ints=[dim])
        value, index = op.Squeeze(value, axes), op.Squeeze(index, axes)
    return value, index


def _sort_stable(self: Any, *, stable: bool | None = None, dim: int = -1, descending: bool = False) -> Any:
    """ONNX for ``aten.sort.stable``, which the exporter lacks: a full-length TopK.

    onnxruntime's TopK puts equal elements in index order (lower index first), which is exactly a
    stable sort, ascending or descending. A stable sort is how a model breaks ties between equal
    scores deterministically, so that eager PyTorch and onnxruntime select the same elements;
    ``topk`` does not (PyTorch's CPU kernel and onnxruntime break ties differently).
    """
    from onnxscript import opset18 as op  # onnxscript is heavy: only the ONNX format needs it

    rank = len(self.shape)
    dim = dim + rank if dim < 0 else dim
    n = op.Shape(self, start=dim, end=dim + 1)
    values, indices = op.TopK(self, n, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def _attention(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
               is_causal: bool = False, *, scale: float | None = None, enable_gqa: bool = False) -> Any:
    """ONNX for ``aten.scaled_dot_product_attention`` in inference, as onnxruntime runs it fastest:
    scaled queries times keys transposed by a Transpose that feeds the MatMul directly, the mask
    added, a softmax, times the values.

    onnxruntime folds the scale and the transpose into one ``FusedMatMul``. The exporter's own
    decomposition scales queries and keys apart and transposes keys through reshapes, which blocks
    that fusion: the dense ViT of ``benchmarks/bench_gflops.py`` ran at 0.79x the rate of this graph
    (batch 256, 2 threads, interleaved). Masks are additive, or boolean (False: not attended, the
    lowest float, as the models' own masks use). Causal, dropout or grouped-query attention, or a
    head size known only at run time, keep the exporter's own translation.
    """
    import onnx_ir as ir  # onnx-ir is heavy: only the ONNX format needs it
    from onnxscript import opset18 as op  # onnxscript is heavy: only the ONNX format needs it

    head = query.shape[-1] if query.shape is not None else None
    if dropout_p or is_causal or enable_gqa or (scale is None and not isinstance(head, int)):
        from onnxscript.function_libs.torch_lib.ops.nn import (  # onnxscript is heavy: only ONNX needs it
            aten_scaled_dot_product_attention,
        )

        return aten_scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                                                 enable_gqa=enable_gqa)
    scale = head**-0.5 if scale is None else scale
    scaled = op.Mul(query, op.CastLike(op.Constant(value_float=scale), query))
    logits = op.MatMul(scaled, op.Transpose(key, perm=[0, 1, 3, 2]))
    if attn_mask is not None:
        if attn_mask.dtype == ir.DataType.BOOL:
            lowest = op.CastLike(op.Constant(value_float=torch.finfo(torch.float32).min), logits)
            logits = op.Where(attn_mask, logits, lowest)
        else:
            logits = op.Add(logits, attn_mask)
    return op.MatMul(op.Softmax(logits, axis=-1), value)


def _onnx_translations() -> dict[Any, Callable[..., Any]]:
    return {
        torch.ops.aten.median.dim: _median_dim, torch.ops.aten.sort.stable: _sort_stable,
        torch.ops.aten.scaled_dot_product_attention.default: _attention,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress lines and warnings (failures still raise)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def first_line(err: BaseException) -> str:
    """An exporter's exception as one line (its type and first message line)."""
    text = str(err).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith("Traceback"):
            return f"{type(err).__name__}: {line.strip()[:300]}"
    return type(err).__name__


def to_exported_program(model: torch.nn.Module, example: torch.Tensor, *,
                        dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` the eval model with a dynamic batch dimension (any N >= 1), or, with
    ``dynamic_batch`` False, for ``example``'s shape alone (the same operators, about a third of the
    export time: what the throughput objective times at its one batch size)."""
    dynamic = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with _quiet():
        # positional form: the forward's argument may have any name (plugin strategies)
        return torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)


def save_pt2(program: torch.export.ExportedProgram, path: Path, card_json: str) -> None:
    """Save the program; the model card rides along as an extra file (``extra_files['model_card.json']``).

    The sample inputs saved with it are one compact image. The program's own are the export's
    example batch, often a view of a larger tensor, which ``torch.save`` writes whole: an export of
    32-px cells carried 6 MB of them beside 60 kB of weights."""
    examples = program.example_inputs
    if examples is not None:
        args, kwargs = examples
        program.example_inputs = (tuple(a[:1].clone() if isinstance(a, torch.Tensor) else a for a in args), kwargs)
    try:
        torch.export.save(program, path, extra_files={CARD_FILE: card_json})
    finally:
        if examples is not None:
            program.example_inputs = examples


def save_onnx(program: torch.export.ExportedProgram, path: Path, metadata: dict[str, str]) -> None:
    """Translate the exported program to a self-contained ONNX file (dynamo exporter, batch named ``batch``)."""
    import onnx_ir as ir  # onnx-ir is heavy: only the ONNX format needs it

    with _quiet():
        onnx_program = torch.onnx.export(
            program, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], optimize=True,
            custom_translation_table=_onnx_translations(), verbose=False,
        )
    graph = onnx_program.model.graph
    for value in [*graph.inputs, *graph.outputs]:  # s0 -> a readable name for the dynamic batch
        if value.shape is not None and len(value.shape) > 0:
            value.shape = ir.Shape([ir.SymbolicDim("batch"), *list(value.shape)[1:]])
    onnx_program.model.metadata_props.update(metadata)
    onnx_program.save(path, external_data=False)



def uses_topk(program: torch.export.ExportedProgram) -> bool:
    """Whether the program selects with ``topk`` (whose tie-breaking differs between runtimes)."""
    return any(node.op == "call_function" and "topk" in str(node.target) for node in program.graph.nodes)


TOPK_HINT = (" (the model selects with topk: where scores tie, PyTorch and onnxruntime keep different elements; "
             "the strategy should select with a stable sort, torch.sort(..., stable=True), which exports exactly)")
