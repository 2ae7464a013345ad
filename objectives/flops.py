"""FLOPs per image at inference: the convention of DESIGN.md §3, and the counter that checks it.

Convention: floating-point operations of one forward pass in eval mode, divided by the batch size;
2 FLOPs per multiply-accumulate in convolutions, linear layers, matmuls and attention (QK^T and
attention @ V, counted over the query-key pairs actually computed); biases, normalisation,
activations, softmax, reductions (global mean pooling included), elementwise and indexing ops are
not counted. The selector and the coarse network run in that forward, so they are included.

What is counted is what runs: a model whose k varies per image (learned rules ``ratio``,
``top_p``) still runs every image of a batch, and its exported graph every image, at the static
cap, the slots an image does not keep being masked; it is counted at the cap.

Resampling, an image made at another size or position, is counted too, since on a small model
it is not free: 2 FLOPs per weighted tap of each output element, and for averages (equal weights)
1 per tap. So bilinear sampling (``grid_sample``, bilinear ``interpolate``) is 8 FLOPs per output
element (4 taps), bicubic 32 (16 taps), nearest 0; an area resize (``interpolate(mode="area")``,
i.e. adaptive average pooling) and average pooling 1 FLOP per input element of each output's
window (C*H*W for a downscale by an integer factor). That covers the area downscale of a model built
with ``input_size`` and the crops TNet samples for its glimpses. The hand formulas are in
``search_space.strategies.blocks`` (``bilinear_flops``, ``area_resize_flops``), beside the others.

Two figures:

* :func:`counted_flops` runs the model under ``torch.utils.flop_counter.FlopCounterMode`` with the
  gaps we know of filled: PyTorch has no formula for CPU ``scaled_dot_product_attention`` (it
  counts 0 as of torch 2.13) and none for the fused ``nn.MultiheadAttention`` /
  ``nn.TransformerEncoderLayer`` fast path, so we add the SDPA formula (4·B·h·Nq·Nk·d, the same
  one PyTorch uses for its CUDA kernels) and switch the fast path off while counting; and none for
  resampling, so we add the formulas above for ``grid_sampler_2d``, ``upsample_bilinear2d``,
  ``upsample_bicubic2d``, ``_adaptive_avg_pool2d`` and ``avg_pool2d``. It counts the tensors it
  sees: masked or padded attention counts as dense, which is what runs.
* :func:`count_flops` is the objective. It is the model's own ``analytic_flops(images)`` when the
  model provides one (a hand formula: no forward to trace, and per-part figures for reports), and
  :func:`counted_flops` otherwise. Tests hold the two within 2% for every strategy and k rule.
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
from search_space.strategies.blocks import area_resize_flops


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

_TAPS = {0: 4, 1: 0, 2: 16}  # grid_sampler_2d's interpolation_mode: bilinear, nearest, bicubic


def _grid_sample_flops(input_shape: Any, grid_shape: Any, mode: int, *args: Any, out_shape: Any, **kwargs: Any) -> int:
    return 2 * _TAPS[int(mode)] * math.prod(out_shape)


def _bilinear_flops(*args: Any, out_shape: Any, **kwargs: Any) -> int:
    return 2 * 4 * math.prod(out_shape)


def _bicubic_flops(*args: Any, out_shape: Any, **kwargs: Any) -> int:
    return 2 * 16 * math.prod(out_shape)


def _adaptive_avg_pool_flops(input_shape: Any, output_size: Any, *args: Any, out_shape: Any, **kwargs: Any) -> int:
    *lead, h_in, w_in = input_shape
    return int(math.prod(lead) * area_resize_flops(1, h_in, w_in, out_shape[-2], out_shape[-1]))


def _avg_pool_flops(input_shape: Any, kernel_size: Any, *args: Any, out_shape: Any, **kwargs: Any) -> int:
    kernel = list(kernel_size) * (2 // len(kernel_size))  # (k,) means (k, k)
    return math.prod(out_shape) * math.prod(kernel)


_CUSTOM_FORMULAS = {
    **{getattr(torch.ops.aten, name): _sdpa_flops for name in _MISSING_SDPA_OPS if hasattr(torch.ops.aten, name)},
    torch.ops.aten.grid_sampler_2d: _grid_sample_flops,
    torch.ops.aten.upsample_bilinear2d: _bilinear_flops,
    torch.ops.aten.upsample_bicubic2d: _bicubic_flops,
    torch.ops.aten._adaptive_avg_pool2d: _adaptive_avg_pool_flops,
    torch.ops.aten.avg_pool2d: _avg_pool_flops,
}


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
