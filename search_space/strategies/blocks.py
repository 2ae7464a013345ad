"""Building blocks shared by every strategy, so candidates differ only in what they select.

Attention runs as ``scaled_dot_product_attention`` (one fused kernel: on 2 CPU cores 3x the rate
of the explicit product, softmax and product) except where a caller keeps the attention weights
(distillation reads the CLS-to-token weights while training): then as explicit matmuls. The
``*_flops`` functions are the hand formulas the FLOPs tests check the counter against (2 FLOPs per
multiply-accumulate; ``objectives.flops`` counts the CPU kernel, which PyTorch's counter misses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    """(B, h, Nq, d) queries, (B, h, Nk, d) keys and values -> (B, Nq, h * d), heads merged, through
    ``scaled_dot_product_attention``; ``mask`` is boolean (True: attended) or additive, broadcast to
    (B, h, Nq, Nk)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, h, Nq, d)
    B, h, n, d = out.shape
    # an explicit copy before the merge: left to reshape, the export records a view that the ONNX
    # exporter's own decomposition of the kernel (another memory layout) cannot take
    return out.transpose(1, 2).clone(memory_format=torch.contiguous_format).reshape(B, n, h * d)


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, D) tokens with an optional additive bias or key mask."""

    def __init__(self, *, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.last_attn: torch.Tensor | None = None  # (B, heads, N, N) softmax weights of the last call

    def forward(
        self,
        x: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        keep_attn: bool = False,
    ) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if not keep_attn:
            self.last_attn = None
            mask = None if key_mask is None else key_mask[:, None, None, :]  # True = attended
            if bias is not None:
                mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
            return self.proj(fused_attention(q, k, v, mask, self.scale))
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
        if bias is not None:
            logits = logits + bias
        if key_mask is not None:  # (B, N) True = real token
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn = logits.softmax(dim=-1)
        self.last_attn = attn if keep_attn else None
        out = (attn @ v).transpose(1, 2).reshape(B, N, D)
        return self.proj(out)


class Mlp(nn.Module):
    """Two-layer GELU MLP with hidden width ``dim * mlp_ratio``."""

    def __init__(self, *, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, mlp_ratio=mlp_ratio)

    def forward(
        self,
        x: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        keep_attn: bool = False,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias=bias, key_mask=key_mask, keep_attn=keep_attn)
        return x + self.mlp(self.norm2(x))


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """``images`` in channels-last memory where no gradient is taken (inference and export): the
    layout oneDNN's CPU convolutions run natively, 1.5-2.5x the rate of NCHW on 2 cores at batch 256.
    The exported graph keeps the conversion; onnxruntime, which picks its own layout, ignores it.
    Training keeps NCHW: with torch 2.13 the channels-last backward of a BatchNorm stem corrupted the
    heap on small batches (3 frames of 3 x 28 x 28)."""
    if torch.is_grad_enabled() and not torch.compiler.is_exporting():
        return images
    return images.contiguous(memory_format=torch.channels_last)


class ClassifierHead(nn.Module):
    """LayerNorm then a linear layer to class logits."""

    def __init__(self, *, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


def linear_flops(n_tokens: float, d_in: int, d_out: int) -> float:
    """FLOPs of a linear layer applied to ``n_tokens`` vectors."""
    return 2.0 * n_tokens * d_in * d_out


def attention_flops(n_queries: float, n_keys: float, dim: int) -> float:
    """FLOPs of one self-attention layer: qkv and output projections plus QK^T and AV."""
    projections = linear_flops(n_queries, dim, 3 * dim) + linear_flops(n_queries, dim, dim)
    pairs = 2.0 * 2.0 * n_queries * n_keys * dim  # QK^T and attn @ V, summed over heads
    return projections + pairs


def mlp_flops(n_tokens: float, dim: int, mlp_ratio: float) -> float:
    hidden = int(dim * mlp_ratio)
    return linear_flops(n_tokens, dim, hidden) + linear_flops(n_tokens, hidden, dim)


def block_flops(n_tokens: float, dim: int, mlp_ratio: float) -> float:
    """FLOPs of one ``TransformerBlock`` over ``n_tokens`` tokens with full attention."""
    return attention_flops(n_tokens, n_tokens, dim) + mlp_flops(n_tokens, dim, mlp_ratio)


def conv2d_flops(h_out: int, w_out: int, c_in: int, c_out: int, kernel: int, groups: int = 1) -> float:
    """FLOPs of a 2-D convolution producing an (h_out, w_out) map."""
    return 2.0 * h_out * w_out * c_out * (c_in // groups) * kernel * kernel


# Resampling (an image made at another size or position), under the convention of objectives/flops.py:
# 2 FLOPs per weighted tap of each output element, and for averages (equal weights) 1 per tap.


def bilinear_flops(n_out: float) -> float:
    """Bilinear sampling (``grid_sample``, ``interpolate``): 4 weighted taps, 8 FLOPs per output element."""
    return 8.0 * n_out


def _window_sum(n_in: int, n_out: int) -> int:
    """Summed window lengths of adaptive average pooling along one axis (PyTorch's windows:
    floor(i * n_in / n_out) to ceil((i + 1) * n_in / n_out))."""
    return sum(-(-(i + 1) * n_in // n_out) - i * n_in // n_out for i in range(n_out))


def area_resize_flops(channels: int, h_in: int, w_in: int, h_out: int, w_out: int) -> float:
    """An area resize (``interpolate(mode="area")``, adaptive average pooling) of one image: each
    output element averages its window, 1 FLOP per input element in it (C*H*W at an integer ratio)."""
    return float(channels * _window_sum(h_in, h_out) * _window_sum(w_in, w_out))


FOREGROUND_PRIOR_WEIGHT = 2.0  # a standardised foreground prior's weight, added to selection logits


def border_background(images: torch.Tensor) -> torch.Tensor:
    """(B, C) per-channel median of each image's border: its background (a smear's bare glass)."""
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=-1)
    return border.median(dim=-1).values


def distance_from_background(images: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(B, H, W) each pixel's mean |value - background| over the channels (``background`` is (B, C))."""
    return (images - background[:, :, None, None]).abs().mean(dim=1)


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """(B, N) scores shifted and scaled to mean 0 and standard deviation 1 per row."""
    return (scores - scores.mean(dim=1, keepdim=True)) / (scores.std(dim=1, keepdim=True) + 1e-6)


SORT_ALL_BELOW = 1024  # rows shorter than this are sorted whole (one op); longer ones select first


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest ``scores`` along dim 1, best first, ties in index order: what a
    stable descending sort's first ``k`` are, on every runtime.

    ``torch.topk`` alone breaks ties differently on CPU, CUDA and in onnxruntime, so an exported
    model could keep other pixels than the eager one on flat backgrounds. Short rows are sorted
    whole (a stable sort exports to an ONNX TopK that orders ties by index, exactly like this). On a
    long row the full sort was the costly part of a selection (4,096 pixels: 6x a ``topk`` of 164),
    so there ``topk`` finds the k-th largest value only, which is the same whichever ties a runtime
    keeps; every score above it is kept, and of those equal to it the lowest indices, as many as
    fill k; the kept are listed in index order through a ``topk`` of distinct keys, then ordered by
    a stable sort of just those ``k`` scores.
    """
    n = scores.shape[1]
    if n < SORT_ALL_BELOW or k >= n or k == 0:
        return scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    scores = scores.nan_to_num(nan=float("inf"))  # the sort puts NaN first; equal to it the comparisons below see
    kth = scores.topk(k, dim=1).values[:, -1:]  # (B, 1)
    above, tied = scores > kth, scores == kth
    room = k - above.sum(dim=1, keepdim=True)  # tied scores the selection takes
    kept = above | (tied & (tied.cumsum(dim=1) <= room))  # (B, n): exactly k per row
    first_index = torch.arange(n, 0, -1, device=scores.device, dtype=torch.float32)  # distinct, exact in float32
    idx = (kept * first_index).topk(k, dim=1).indices  # (B, k) the kept, in index order
    best = scores.gather(1, idx).sort(dim=1, descending=True, stable=True).indices
    return idx.gather(1, best)
