"""FLOPs per image at inference: the convention of DESIGN.md §3, and the counter that checks it.

Convention: floating-point operations of one forward pass in eval mode, divided by the batch size;
2 FLOPs per multiply-accumulate in convolutions, linear layers, matmuls and attention (QK^T and
attention @ V, counted over the query-key pairs actually computed); biases, normalisation,
activations, softmax, pooling, interpolation, elementwise and indexing ops are not counted. The
selector and the coarse network run in that forward, so they are included; the area downscale of a
model built with ``input_size`` is interpolation and counts 0, so such a model costs what its
network costs at ``input_size``.

Two figures:

* :func:`counted_flops` runs the model under ``torch.utils.flop_counter.FlopCounterMode`` with the
  gaps we know of filled: PyTorch has no formula for CPU ``scaled_dot_product_attention`` (it
  counts 0 as of torch 2.13) and none for the fused ``nn.MultiheadAttention`` /
  ``nn.TransformerEncoderLayer`` fast path, so we add the SDPA formula (4·B·h·Nq·Nk·d, the same
  one PyTorch uses for its CUDA kernels) and switch the fast path off while counting. It counts
  the tensors it sees: masked or padded attention counts as dense.
* :func:`count_flops` is the objective. It is the model's own ``analytic_flops(images)`` when the
  model provides one (models with per-image k: the counter sees the padded batch, the hand formula
  counts what each image needs), and :func:`counted_flops` otherwise. Tests hold the two together
  wherever k is fixed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from objectives._inference import inference


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """QK^T plus attention @ V for (B, h, Nq, d) queries: 2·B·h·Nq·Nk·(d_qk + d_v).

    Key/value may have fewer heads than the query (grouped-query attention); every query head
    still computes its own scores, so the count uses the query's heads.
    """
    *batch, n_q, d_qk = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * n_q * n_k * (d_qk + d_v)


# Attention kernels PyTorch's registry has no formula for (CUDA's flash/efficient/cudnn ones it has).
_MISSING_SDPA_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
)
_CUSTOM_FORMULAS = {getattr(torch.ops.aten, name): _sdpa_flops for name in _MISSING_SDPA_OPS if hasattr(torch.ops.aten, name)}


@contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """Route nn.MultiheadAttention through linear + SDPA, which the counter sees, instead of one fused op."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def _batch_size(images: torch.Tensor) -> int:
    if images.dim() == 0 or images.shape[0] == 0:
        raise ValueError(f"FLOPs need a non-empty batch of images, but got shape {tuple(images.shape)}")
    return int(images.shape[0])


def counted_flops(model: nn.Module, images: torch.Tensor) -> float:
    """Mean FLOPs per image of one eval forward on ``images``, as counted at the dispatcher."""
    batch = _batch_size(images)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FORMULAS)
    with inference(model), _mha_fastpath_off(), counter:
        model(images)
    return counter.get_total_flops() / batch


def count_flops(model: nn.Module, images: torch.Tensor) -> float:
    """The FLOPs objective: mean FLOPs per image at inference (DESIGN.md §3).

    Uses ``model.analytic_flops(images)`` when the model has it and it returns a number (it runs in
    eval mode without autograd, like the forward it describes); otherwise :func:`counted_flops`.
    """
    _batch_size(images)
    analytic = getattr(model, "analytic_flops", None)
    if callable(analytic):
        with inference(model):
            value = analytic(images)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise TypeError(f"{type(model).__name__}.analytic_flops returned {value!r}; expected FLOPs >= 0")
            return float(value)
    return counted_flops(model, images)
