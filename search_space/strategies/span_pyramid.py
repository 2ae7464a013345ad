"""``span_pyramid``: SPAN (Wu et al., arXiv 2406.09333) adapted from slides to single cells.

The image is cut into ``patch_size`` patches on an integer grid (padded by edge replication to a
whole number of patches). Each patch gets an informativeness score and only the best ``k`` are kept
(``keep_fraction`` of the patches initially; k is the kept-patch count, within [1, n_patches]):

``foreground``  mean |pixel - background| over the patch, the background being the per-channel
                median of the image border (the analogue of SPAN's tissue mask);
``variance``    pixel variance within the patch;
``learned``     a small MLP on the patch pixels. It learns from two signals: a straight-through gate
                (each kept token is multiplied by 1 + s - sg(s), s = sigmoid(score), so the class
                loss reaches the scorer without changing the forward), and, in ``auxiliary_loss``, a
                distillation of the global tokens' attention over the kept patches (stop-gradient,
                normalised by its maximum) with unselected patches as negatives (target 0).

Where it pays: many tokens (windowed attention saves nothing over 64-256 of them) and a small,
stained target. On 256-px synthetic fields (1,024 8-px patches, a 32-px cell at 1.2% of the frame; 3
seeds) keeping the 7.4% most foreground patches, width 64, two layers, it reaches 60.6% test at 31.3
MFLOPs (24% of the native dense CNN's), 9 points above the dense CNN at the same FLOPs and 16 below
it at native size, with 11x random's share of its patches on the target (docs/benchmarks.md, "The
goal on fields").

Speed: the dense local path runs as one fused attention kernel whose additive mask is the
relative-position bias and the window mask at once, read by one gather from each layer's bias
table (a masked entry at its end); the merge is a weighted sum; the foreground score pools the frame
and only kept patches are cut out of it. At batch 256 on 2 threads that makes 0.27x dense_cnn's
GFLOP/s in torch and 0.20-0.21x in onnxruntime (two runs, dense_cnn timed warm; from 0.19x and 0.05x;
docs/benchmarks.md, "Achieved GFLOP/s"). What remains is the pyramid's bookkeeping (the bias of every query-key pair,
the gathers and merges), about a quarter of the time in torch, and 16-wide heads, whose pairs run
far below a convolution's rate on either runtime.

Kept patches are gathered (top-k, static shapes) into tokens with integer (row, col) coordinates and
embedded: ``patch_embed: linear`` flattens the patch pixels into one linear layer; ``conv`` first runs
a small 3x3 conv stem (``STEM_CHANNELS``, GELU) on the patch and a one-pixel halo of its neighbours,
which is a dense conv stem computed only where patches are kept, then the linear layer.

Each of ``stages`` stages runs ``depth`` SPAN layers. A layer has two attention paths over the
pre-normed tokens, whose outputs are summed before one output projection (SPAN's "long" mode):

``local``   a patch attends, with its own Q/K/V and a learned relative position bias, to the patches
            in its regular ``window`` x ``window`` window or its shifted window (offset window // 2),
            one softmax over the union of both partitions. Each query gathers its two windows' cells
            (2 * window**2 key slots, slots for absent patches and repeats masked), so only those
            pairs are computed; when a stage has at most ``DENSE_LOCAL_FACTOR`` times that many
            tokens, the dense masked product over its tokens runs instead (see below);
``global``  ``global_tokens`` tokens with their own Q/K/V: they attend to every kept patch and to one
            another, and every patch reads them in a softmax of its own (one global token is simply
            read, the softmax over one key being 1).

The network's last layer updates only the global tokens: the classifier reads nothing else, so its
local path and its token projections would be dead work (in SPAN too) and are not built.
The gathered path computes the fewest pairs (cost linear in kept patches, independent of the grid),
but it is memory-bound: every query copies its key slots' keys and values (2 * window**2 * D floats
a query, against the dense path's T * heads logits), so on CPU runtimes it ran at a small fraction
of a dense product's rate. Measured at 64 px (batch 64, D 64, 4 heads, 32 key slots, torch eager
on 2 threads), one local attention took 0.5x the gathered path's time as the dense product at 77
and 154 tokens, and 1.6x at 256. So the dense masked product runs up to ``DENSE_LOCAL_FACTOR``
times the key slots (it computes more pairs, and the FLOPs count them: the objective counts what
runs), the gathered path beyond, where the T**2 pairs would dominate.

Between stages, sparse stride-2 downsampling merges the children present under each 2x2 parent:
LayerNorm, then a depthwise 2x2 stride-2 convolution over the four child slots (absent children are
zeros) divided by the number of children present (SPAN's count-normalised edge mode; the weights
start at 1, so the merge starts as the mean of the present children). Global tokens pass unchanged.
The mean global token of every stage is normalised and the stages are summed for the classifier head,
as SPAN's ``multi_addition`` readout.

Per-image k rules: ``top_p`` keeps, per image, the fewest best patches holding ``k_top_p`` of the
score mass (sigmoid scores for ``learned``, the raw non-negative scores otherwise). ``ratio`` is
DynamicViT's rule and needs ``keep_score: learned``: while training, each candidate is kept with
probability sigmoid(score) (logistic noise, the straight-through gate carrying the class loss), the
ratio loss pulls the mean keep probability toward ``k_target_ratio`` and replaces the distillation
(whose negatives would pull every probability under 0.5); in eval an image keeps its round(sum of
probabilities) best patches, the expected number of sampled keeps. (The shared ``per_image_k``
counts probabilities above 0.5 instead, but a ratio-trained scorer's probabilities settle around the
target, mostly below 0.5, so that count collapses toward 1.) With a fixed score there is no keep
decision to learn, and ``ratio`` keeps ``k_target_ratio`` of the patches for every image. The
static top-k is the cap; patches not kept by an image are padding slots, masked out of attention,
merging and pooling.

FLOPs: ``analytic_flops`` counts what the forward executes (FlopCounterMode agrees, see the tests):
every token slot of a stage in the linear layers and MLPs, K_s * K_s query-key pairs in the local
path while the dense product runs (K_s <= 4 * 2 * window**2), else K_s * 2 * window**2, the global
path's pairs, the merge convolution on every parent slot, the conv stem on every kept patch
(``SpanLayer.flops`` and ``SpanPyramid.flops_at`` hold the formulas). Shapes are static, so a stage
holds min(K_{s-1}, parent cells) parent slots even when fewer parents are present. Under a per-image
rule every image runs at the cap (its padding slots are masked, not skipped), so it is counted at
the cap: the batched forward and the exported model execute that, whatever an image keeps. The
learned scorer runs on every patch. Scoring by foreground or variance, top-k, gathers, norms,
softmax and activations are excluded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_space.k_rules import k_rule_class
from search_space.strategies.base import CountedKModel, ParamSpec, eval_mode, register_strategy, transformer_params
from search_space.strategies.blocks import (
    ClassifierHead,
    Mlp,
    border_background,
    conv2d_flops,
    distance_from_background,
    fused_attention,
    linear_flops,
    top_indices,
)

KEEP_SCORES = ("foreground", "variance", "learned")
PATCH_EMBEDS = ("linear", "conv")
SCORER_HIDDEN = 16  # width of the learned patch scorer
STEM_CHANNELS = 8  # output channels of the conv patch-embedding stem
RATIO_LOSS_WEIGHT = 2.0  # DynamicViT's weight on the keep-ratio loss
DENSE_LOCAL_FACTOR = 4  # local attention runs dense over a stage's T tokens while T <= this x the key slots
_TIE_BREAK = 1e-6  # equal scores prefer patches nearer the centre (cells are centred), deterministically


def _grid_side(size: int, patch_size: int) -> int:
    return -(-size // patch_size)


def _masked_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where ``allowed``; a row with nothing allowed (a padding query) is
    uniform instead of NaN, so padding slots stay finite (nothing real reads them)."""
    return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min).softmax(dim=-1)


def _masked(bias_index: torch.Tensor, allowed: torch.Tensor, window: int) -> torch.Tensor:
    """``bias_index`` where ``allowed``, else the masked entry that follows the (2 * window - 1)**2
    relative positions in a layer's bias table (``SpanLayer._local``): the lowest float."""
    return bias_index.masked_fill(~allowed, (2 * window - 1) ** 2)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, D) -> (B, heads, N, D / heads)."""
    B, N, D = x.shape
    return x.reshape(B, N, heads, D // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)


class _StagePlan:
    """Where a stage's tokens are and which keys each one attends to locally.

    ``keys`` is None for the dense path (``allowed`` (B, T, T)); otherwise (B, T, S) slot indices into
    the tokens plus one zero padding slot (index T), with ``allowed`` (B, T, S). ``bias_index`` has
    ``allowed``'s shape and indexes the relative position bias table, a pair not allowed its masked
    entry (``_masked``): one gather makes the bias and the mask together. A stage without local
    attention has only ``valid``.
    """

    def __init__(
        self, *, valid: torch.Tensor, keys: torch.Tensor | None, allowed: torch.Tensor | None, bias_index: torch.Tensor | None
    ) -> None:
        self.valid, self.keys, self.allowed, self.bias_index = valid, keys, allowed, bias_index
        self._bias_rows: torch.Tensor | None = None

    def bias_rows(self, heads: int) -> torch.Tensor:
        """``bias_index`` flattened and repeated for ``heads`` table rows, (heads, B * T * S): made once
        and shared by the stage's layers (a view in torch, one Expand in an exported graph)."""
        if self._bias_rows is None or self._bias_rows.shape[0] != heads:
            self._bias_rows = self.bias_index.reshape(1, -1).expand(heads, -1)
        return self._bias_rows


class SpanLayer(nn.Module):
    """One SPAN layer: local union-window attention and a separate global-token path, summed, then an
    output projection and an MLP, both pre-norm residual.

    With ``update_tokens=False`` (the network's last layer, whose token outputs nothing reads: the
    classifier reads the global tokens) only the global tokens are updated, so the local path, and
    the projection and MLP of the tokens, are neither built nor run.
    """

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float, window: int, global_tokens: int, update_tokens: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={dim}")
        self.num_heads, self.global_tokens, self.update_tokens = num_heads, global_tokens, update_tokens
        self.scale = (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.local_qkv = nn.Linear(dim, 3 * dim) if update_tokens else None
        self.global_q = nn.Linear(dim, dim)
        self.global_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, mlp_ratio=mlp_ratio)
        # Relative position bias per head, indexed by (d_row, d_col) in [-(w-1), w-1]^2.
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, (2 * window - 1) ** 2)) if update_tokens else None
        if self.rel_bias is not None:
            nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.last_global_attn: torch.Tensor | None = None  # (B, T): global tokens' attention over the patches

    def _local(self, x: torch.Tensor, plan: _StagePlan) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): attention within each token's union of windows."""
        B, T, D = x.shape
        H = self.num_heads
        q, k, v = self.local_qkv(x).chunk(3, dim=-1)  # (B, T, D) each
        # The bias and mask of every (query, key) pair in one element-wise gather from each head's
        # row of the table, read through a transposed view (B, H, T, S). index_select along the row
        # ran 2-5x slower in torch and onnxruntime alike, a gather of (B, T, S, H) rows and a
        # transposed copy 2-4x slower in torch.
        table = torch.cat([self.rel_bias, self.rel_bias.new_full((H, 1), torch.finfo(self.rel_bias.dtype).min)], dim=1)
        bias = table.gather(1, plan.bias_rows(H)).reshape(H, *plan.bias_index.shape).transpose(0, 1)
        if plan.keys is None:  # dense masked product over the stage's T tokens, one fused kernel
            return fused_attention(_split_heads(q, H), _split_heads(k, H), _split_heads(v, H), bias, self.scale)
        # Gather each query's keys and values head-major, whole rows of (B * H * (T + 1), d) picked by
        # one index vector (index_select, an ONNX Gather on axis 0: a row copy each, where an
        # element-wise gather with an expanded index ran 10x slower in onnxruntime): the gathered
        # blocks are then contiguous (B * H * T, S, d) batches for bmm, with no copy of their own.
        S, d = plan.keys.shape[-1], D // H
        pad = x.new_zeros(B, 1, D)
        offsets = torch.arange(B * H, device=x.device).reshape(B, H, 1, 1) * (T + 1)
        rows = (plan.keys[:, None] + offsets).reshape(-1)  # (B * H * T * S,)

        def gathered(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B * H * T, S, d)
            heads = _split_heads(torch.cat([t, pad], dim=1), H)  # (B, H, T + 1, d)
            return heads.reshape(-1, d).index_select(0, rows).reshape(-1, S, d)

        q = (_split_heads(q, H) * self.scale).reshape(-1, 1, d)  # (B * H * T, 1, d)
        logits = torch.bmm(q, gathered(k).transpose(1, 2)).reshape(B, H, T, S)  # only the gathered pairs
        attn = (logits + bias).softmax(dim=-1)  # a padding query, all masked, is uniform (finite): nothing reads it
        out = torch.bmm(attn.reshape(-1, 1, S), gathered(v))  # (B * H * T, 1, d)
        return _merge_heads(out.reshape(B, H, T, d))

    def _global(
        self, g: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, keep_attn: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Global tokens (B, G, D) read every real token and each other; every token reads the globals."""
        G, H = self.global_tokens, self.num_heads
        k, v = self.global_kv(torch.cat([g, x], dim=1)).chunk(2, dim=-1)  # (B, G + T, D) each
        k, v = _split_heads(k, H), _split_heads(v, H)  # (B, H, G + T, d)
        key_ok = torch.cat([valid.new_ones(valid.shape[0], G), valid], dim=1)[:, None, None, :]  # (B, 1, 1, G + T)
        attn = _masked_softmax((_split_heads(self.global_q(g), H) * self.scale) @ k.transpose(-2, -1), key_ok)
        self.last_global_attn = attn[..., G:].mean(dim=(1, 2)) if keep_attn else None  # (B, T)
        g_out = _merge_heads(attn @ v)  # (B, G, D)
        if not self.update_tokens:
            return g_out, None
        if G == 1:  # a softmax over one key is 1: every token reads the global value as it is
            return g_out, _merge_heads(v[:, :, :1]).expand(-1, x.shape[1], -1)
        read = ((_split_heads(self.global_q(x), H) * self.scale) @ k[:, :, :G].transpose(-2, -1)).softmax(dim=-1)
        return g_out, _merge_heads(read @ v[:, :, :G])  # (B, T, D)

    def forward(
        self, g: torch.Tensor, x: torch.Tensor, plan: _StagePlan, *, keep_attn: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G, D) globals and (B, T, D) tokens -> the same, updated (tokens as they were when
        ``update_tokens`` is False)."""
        G = self.global_tokens
        hg, hx = self.norm1(g), self.norm1(x)
        g_out, read = self._global(hg, hx, plan.valid, keep_attn)
        if read is None:
            g = g + self.proj(g_out)
            return g + self.mlp(self.norm2(g)), x
        h = torch.cat([g, x], dim=1) + self.proj(torch.cat([g_out, self._local(hx, plan) + read], dim=1))
        h = h + self.mlp(self.norm2(h))
        return h[:, :G], h[:, G:]

    def flops(self, tokens: int, key_slots: int) -> float:
        """FLOPs of one layer over ``tokens`` token slots with ``key_slots`` local keys each."""
        D, G, hidden = self.proj.in_features, self.global_tokens, self.mlp.fc1.out_features
        n = tokens + G
        total = linear_flops(n, D, 2 * D) + linear_flops(G, D, D) + 4.0 * G * n * D  # global k/v, q, its pairs
        updated = G  # tokens through the output projection and the MLP
        if self.update_tokens:
            updated = n
            total += linear_flops(tokens, D, 3 * D) + 4.0 * tokens * key_slots * D  # local qkv, QK^T and AV
            if G > 1:
                total += linear_flops(tokens, D, D) + 4.0 * tokens * G * D  # tokens query the globals
        return total + linear_flops(updated, D, D) + linear_flops(updated, D, hidden) + linear_flops(updated, hidden, D)


class _Layout:
    """Where the tokens of every stage are: (B, K_s, 2) coords, (B, K_s) validity, and which child
    slots of stage s - 1 sit under each parent slot of stage s ((B, K_s, 4), padding slot = K_{s-1})."""

    def __init__(self) -> None:
        self.coords: list[torch.Tensor] = []
        self.valid: list[torch.Tensor] = []
        self.grids: list[tuple[int, int]] = []
        self.children: list[torch.Tensor] = []  # per transition


def _slot_map(coords: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, rows * cols + 1): the slot of the real token at each cell, T where there is none (the last
    entry stands for every cell outside the grid)."""
    B, T = valid.shape
    rows, cols = grid
    M = rows * cols
    slots = torch.arange(T, device=coords.device).expand(B, T)
    cells = torch.where(valid, coords[..., 0] * cols + coords[..., 1], M + slots)  # unique: padding aside
    table = torch.full((B, M + T), T, dtype=torch.long, device=coords.device).scatter(1, cells, slots)
    return torch.cat([table[:, :M], table.new_full((B, 1), T)], dim=1)


def _cell_ids(r: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Flat cell id of (r, c), or rows * cols (the outside entry of ``_slot_map``) off the grid."""
    rows, cols = grid
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    return torch.where(inside, r * cols + c, rows * cols)


@register_strategy(
    "span_pyramid",
    params={
        "patch_size": ParamSpec("int", 2, 16, default=4, doc="patch side in pixels (the integer grid)"),
        "keep_score": ParamSpec("choice", choices=KEEP_SCORES, default="foreground", doc="how informative patches are scored"),
        "keep_fraction": ParamSpec(
            "float", 0.0, 1.0, low_open=True, default=0.5, doc="initial k as a fraction of the patches"
        ),
        "patch_embed": ParamSpec(
            "choice", choices=PATCH_EMBEDS, default="linear",
            doc="patch embedding: linear on the pixels, or a 3x3 conv stem (8 channels) first",
        ),
        **transformer_params(embed_dim=32, num_heads=2, depth=1, mlp_ratio=2.0, depth_doc="SPAN layers per stage"),
        "stages": ParamSpec("int", 1, 4, default=2, doc="pyramid stages, stride-2 sparse downsampling between them"),
        "window": ParamSpec("int", 2, 8, default=4, doc="window side in grid cells (shifted windows offset by half)"),
        "global_tokens": ParamSpec("int", 1, 4, default=1, doc="global tokens (own Q/K/V) reading and read by every token"),
        "score_loss_weight": ParamSpec(
            "float", 0.0, 10.0, default=1.0, doc="learned scorer: weight of its distillation loss"
        ),
    },
    uses_k_rule=True,
    doc="SPAN: informative patches, window + shifted-window + global-token attention, sparse pyramid.",
)
class SpanPyramid(CountedKModel):
    """Kept patches -> window + shifted-window + global-token attention stages with sparse pooling."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        patch_size: int,
        keep_score: str,
        keep_fraction: float,
        patch_embed: str,
        embed_dim: int,
        num_heads: int,
        depth: int,
        mlp_ratio: float,
        stages: int,
        window: int,
        global_tokens: int,
        score_loss_weight: float,
        k_rule: str = "fixed",
        k_rule_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if keep_score not in KEEP_SCORES:
            raise ValueError(f"keep_score={keep_score!r} must be one of {list(KEEP_SCORES)}")
        if patch_embed not in PATCH_EMBEDS:
            raise ValueError(f"patch_embed={patch_embed!r} must be one of {list(PATCH_EMBEDS)}")
        self.in_channels, self.num_classes, self.patch_size = in_channels, num_classes, patch_size
        self.keep_score, self.embed_dim, self.num_heads = keep_score, embed_dim, num_heads
        self.depth, self.mlp_ratio, self.window, self.global_tokens = depth, mlp_ratio, window, global_tokens
        self.score_loss_weight = score_loss_weight
        self.k_rule, self.k_rule_config = k_rule, dict(k_rule_config or {})
        side = _grid_side(image_size, patch_size)
        self.n_patches = side * side
        self.rule = k_rule_class(k_rule)  # what the rule does, asked of the rule, not of its name
        self.k_settings = self.rule.settings(self.k_rule_config)  # checked once, read every step
        # A rule that samples learned keep decisions needs the learned scorer; with fixed scores it is
        # its target share, kept fixed.
        sampled_without_scorer = self.rule.per_image and self.rule.samples_keeps and keep_score != "learned"
        self.per_image = self.rule.per_image and not sampled_without_scorer
        if sampled_without_scorer:
            keep_fraction = self.rule.expected_fraction(self.k_settings)
        self._k = min(max(round(keep_fraction * self.n_patches), 1), self.n_patches)

        patch_dim = in_channels * patch_size * patch_size
        self.scorer = (
            nn.Sequential(nn.Linear(patch_dim, SCORER_HIDDEN), nn.GELU(), nn.Linear(SCORER_HIDDEN, 1))
            if keep_score == "learned"
            else None
        )
        # conv: a 3x3 stem on each kept patch and its one-pixel halo (valid conv -> p x p), then linear.
        self.stem = nn.Sequential(nn.Conv2d(in_channels, STEM_CHANNELS, 3), nn.GELU()) if patch_embed == "conv" else None
        self.embed = nn.Linear(STEM_CHANNELS * patch_size**2 if self.stem is not None else patch_dim, embed_dim)
        self.global_init = nn.Parameter(torch.zeros(1, global_tokens, embed_dim))
        nn.init.trunc_normal_(self.global_init, std=0.02)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                SpanLayer(
                    dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, window=window, global_tokens=global_tokens,
                    update_tokens=(stage, j) != (stages - 1, depth - 1),  # nothing reads the last layer's tokens
                )
                for j in range(depth)
            )
            for stage in range(stages)
        )
        self.merge_norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(stages - 1))
        self.merges = nn.ModuleList(
            nn.Conv2d(embed_dim, embed_dim, 2, stride=2, groups=embed_dim, bias=False) for _ in range(stages - 1)
        )
        for merge in self.merges:  # start as the mean of the present children
            nn.init.ones_(merge.weight)
        self.stage_norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(stages))
        self.head = ClassifierHead(dim=embed_dim, num_classes=num_classes)
        self._last_counts: torch.Tensor | None = None  # (B,) patches kept per image by the last forward
        self._cache: dict[str, torch.Tensor] = {}

    # --- k ---------------------------------------------------------------------------------------
    def k_bounds(self) -> tuple[int, int]:
        return 1, self.n_patches

    # --- selection -------------------------------------------------------------------------------
    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        """(rows, cols) of the patch grid over whole patches (the last ones padded)."""
        H, W = images.shape[-2:]
        return _grid_side(H, self.patch_size), _grid_side(W, self.patch_size)

    def _padded(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Images padded by edge replication to whole patches, and the grid's (rows, cols)."""
        H, W = images.shape[-2:]
        p = self.patch_size
        rows, cols = self._grid(images)
        if rows * p != H or cols * p != W:
            images = F.pad(images, (0, cols * p - W, 0, rows * p - H), mode="replicate")
        return images, rows, cols

    def _patches(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(B, C, H, W) -> (B, n, C*p*p) patch pixels on the integer grid, and the grid's (rows, cols)."""
        B, C = images.shape[:2]
        p = self.patch_size
        images, rows, cols = self._padded(images)
        patches = images.reshape(B, C, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, p, p)
        return patches.reshape(B, rows * cols, C * p * p), rows, cols

    def _windows(self, frames: torch.Tensor, coords: torch.Tensor, side: int) -> torch.Tensor:
        """(B, C, H', W') frames, (B, K, 2) patch coords -> (B, C, K, side, side): the side x side pixels
        from each patch's top-left pixel (row * patch_size, col * patch_size), one gather per frame."""
        B, C, _, width = frames.shape
        K, p = coords.shape[1], self.patch_size
        offsets = torch.arange(side, device=coords.device)
        pix_r = coords[..., 0, None] * p + offsets  # (B, K, side)
        pix_c = coords[..., 1, None] * p + offsets
        flat = (pix_r[..., :, None] * width + pix_c[..., None, :]).reshape(B, 1, K * side * side)
        return frames.flatten(2).gather(2, flat.expand(-1, C, -1)).reshape(B, C, K, side, side)

    def _scores(self, images: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(B, n) informativeness of every patch of ``frames`` (the images padded to whole patches,
        ``_padded``; the background is read on the images' own border); logits for ``learned``. The
        foreground score pools the frame as it lies, and the learned scorer's first layer runs as the
        stride-p convolution it is on the frame: cutting every patch out first cost more than either
        (on 256-px frames of 8-px patches the learned-score model ran 1.41x faster in torch, 1.14x in
        onnxruntime)."""
        B, C = images.shape[:2]
        p = self.patch_size
        if self.keep_score == "foreground":
            background = border_background(images)  # (B, C)
            return F.avg_pool2d(distance_from_background(frames, background)[:, None], p).flatten(1)
        if self.scorer is not None:  # Linear(C*p*p) over (C, p, p) patch pixels = a p x p conv of stride p
            first, act, last = self.scorer
            hidden = F.conv2d(frames, first.weight.reshape(-1, C, p, p), first.bias, stride=p)
            return last(act(hidden.flatten(2).transpose(1, 2))).squeeze(-1)  # (B, n)
        patches = self._patches(frames)[0]  # (B, n, C*p*p)
        return patches.reshape(B, patches.shape[1], C, -1).var(dim=-1, unbiased=False).mean(dim=-1)

    @staticmethod
    def _centre_preference(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """(rows*cols,) in [-1, 0]: minus the normalised distance of each patch from the grid centre."""
        r = torch.arange(rows, device=like.device, dtype=like.dtype) - (rows - 1) / 2
        c = torch.arange(cols, device=like.device, dtype=like.dtype) - (cols - 1) / 2
        dist = (r[:, None] ** 2 + c[None, :] ** 2).sqrt().flatten()
        return -dist / dist.max().clamp_min(1e-12)

    def _k_for(self, n: int) -> int:
        """The kept count (the static cap under per-image rules) on a grid of ``n`` patches."""
        return self._k if n == self.n_patches else min(max(round(self._k * n / self.n_patches), 1), n)

    def _select(self, images: torch.Tensor) -> dict[str, Any]:
        """Score the patches and keep the top K: scores, order, coords and validity of the kept, and
        the padded frames they were read from."""
        frames, rows, cols = self._padded(images)  # padded once, read by the scores and the embedding
        n = rows * cols
        scores = self._scores(images, frames)  # (B, n)
        K = self._k_for(n)
        ranked = scores.detach() + _TIE_BREAK * self._centre_preference(rows, cols, scores)
        order = top_indices(ranked, K)  # (B, K), best first
        row = torch.div(order, cols, rounding_mode="floor")
        coords = torch.stack([row, order - row * cols], dim=-1)  # (B, K, 2) integer (row, col)
        rank = torch.arange(K, device=order.device)[None, :]  # (1, K)
        if self.per_image and self.rule.samples_keeps and self.training:
            # DynamicViT: sampled keep decisions while training, kept with probability sigmoid(score).
            kept_logits = scores.gather(1, order)  # (B, K)
            u = torch.rand_like(kept_logits).clamp(1e-6, 1 - 1e-6)
            valid = (kept_logits.detach() + torch.log(u) - torch.log1p(-u) > 0) | (rank == 0)  # (B, K)
            counts = valid.sum(dim=1)
        else:
            if self.per_image:  # eval under a sampling rule: the expected number of its keeps
                mass = scores.sigmoid() if self.scorer is not None else scores.clamp_min(0)
                counts = self.rule.counts(mass, self.k_settings, k_max=K)  # (B,)
            else:
                counts = order.new_full((images.shape[0],), K)
            valid = rank < counts[:, None]  # (B, K): each image keeps a prefix of its ranking
        return {
            "scores": scores, "order": order, "coords": coords, "valid": valid,
            "counts": counts, "grid": (rows, cols), "frames": frames,
        }

    def _embed(self, sel: dict[str, Any]) -> torch.Tensor:
        """(B, K, D) tokens of the kept patches (padding slots too), from the selection's frames."""
        B, K = sel["order"].shape
        padded = sel["frames"]  # (B, C, rows*p, cols*p)
        p, C = self.patch_size, padded.shape[1]
        if self.stem is None:  # the kept patches' pixels, (C, p, p) flattened
            return self.embed(self._windows(padded, sel["coords"], p).transpose(1, 2).reshape(B, K, C * p * p))
        # each kept patch with a one-pixel halo from the zero-padded image
        halo = self._windows(F.pad(padded, (1, 1, 1, 1)), sel["coords"], p + 2)  # (B, C, K, p+2, p+2)
        halo = halo.transpose(1, 2).reshape(-1, C, p + 2, p + 2)  # (B*K, C, p+2, p+2)
        return self.embed(self.stem(halo).reshape(B, K, STEM_CHANNELS * p * p))

    def _layout(self, coords: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int]) -> _Layout:
        """Coordinates and validity of every stage's tokens after sparse stride-2 downsampling."""
        layout = _Layout()
        layout.coords.append(coords)
        layout.valid.append(valid)
        layout.grids.append(grid)
        for _ in range(len(self.stages) - 1):
            child_grid = grid
            rows, cols = grid = (_grid_side(grid[0], 2), _grid_side(grid[1], 2))
            M, K = rows * cols, coords.shape[1]
            pid = torch.div(coords[..., 0], 2, rounding_mode="floor") * cols + torch.div(
                coords[..., 1], 2, rounding_mode="floor"
            )  # (B, K) parent cell of each child
            present = valid.new_zeros(valid.shape[0], M, dtype=torch.float32).scatter_add(1, pid, valid.float()) > 0
            present_first = present.float() * 2 - torch.arange(M, device=pid.device) / M  # id order
            cells = top_indices(present_first, min(K, M))  # (B, K'): present parents first
            row = torch.div(cells, cols, rounding_mode="floor")
            parents = torch.stack([row, cells - row * cols], dim=-1)  # (B, K', 2)
            # The four children of each parent, in (row, col) order, as slots of the child stage.
            dr = torch.tensor([0, 0, 1, 1], device=pid.device)
            dc = torch.tensor([0, 1, 0, 1], device=pid.device)
            child = _cell_ids(2 * parents[..., :1] + dr, 2 * parents[..., 1:] + dc, child_grid)  # (B, K', 4)
            slots = _slot_map(coords, valid, child_grid).gather(1, child.flatten(1)).reshape(child.shape)
            coords, valid = parents, present.gather(1, cells)
            layout.children.append(slots)
            layout.coords.append(coords)
            layout.valid.append(valid)
            layout.grids.append(grid)
        return layout

    def _key_slots(self, tokens: int) -> int:
        """Local keys each query computes: every token of the stage on the dense path (up to
        ``DENSE_LOCAL_FACTOR`` times the window slots), else its two windows' cells."""
        slots = 2 * self.window**2
        return tokens if tokens <= DENSE_LOCAL_FACTOR * slots else slots

    def _plan(self, coords: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int], *, dense: bool | None = None) -> _StagePlan:
        """Each token's local keys: its regular window and its shifted window (offset window // 2),
        deduplicated, real tokens only. ``dense`` forces a path (tests); by default the faster one."""
        B, T = valid.shape
        w = self.window
        shift, span = w // 2, 2 * w - 1
        r, c = coords[..., 0], coords[..., 1]  # (B, T)
        if dense is None:
            dense = self._key_slots(T) == T
        if dense:
            # Per token first, then one op per (B, T, T) fact: the (query, key) pairs are many, the tokens few.
            def window_id(offset: int) -> torch.Tensor:  # (B, T) id of each token's window at this offset
                row, col = (torch.div(a + offset, w, rounding_mode="floor") for a in (r, c))
                return row * (grid[1] + w) + col

            regular, shifted = window_id(0), window_id(shift)
            window = (regular[:, :, None] == regular[:, None, :]) | (shifted[:, :, None] == shifted[:, None, :])
            # every query sees itself, so no row is fully masked: a padding query's (nothing reads its
            # output) would be NaN in some fused kernels once a bf16 mask rounds the lowest float to -inf
            own = torch.eye(T, dtype=torch.bool, device=coords.device)
            allowed = (window & valid[:, None, :]) | own
            # (d_row + w - 1) * span + d_col + w - 1 as one difference; a pair sharing a window is within
            # w - 1 rows and columns, so the rest (no table entry of their own) are masked
            position = r * span + c
            bias_index = (position + (w - 1) * (span + 1))[:, None, :] - position[:, :, None]
            return _StagePlan(valid=valid, keys=None, allowed=allowed, bias_index=_masked(bias_index, allowed, w))
        offsets = torch.arange(w, device=coords.device)
        reg_r = (torch.div(r, w, rounding_mode="floor") * w)[..., None] + offsets  # (B, T, w)
        reg_c = (torch.div(c, w, rounding_mode="floor") * w)[..., None] + offsets
        sh_r = (torch.div(r + shift, w, rounding_mode="floor") * w - shift)[..., None] + offsets
        sh_c = (torch.div(c + shift, w, rounding_mode="floor") * w - shift)[..., None] + offsets
        key_r = torch.cat([reg_r[..., :, None].expand(-1, -1, w, w), sh_r[..., :, None].expand(-1, -1, w, w)], dim=2)
        key_c = torch.cat([reg_c[..., None, :].expand(-1, -1, w, w), sh_c[..., None, :].expand(-1, -1, w, w)], dim=2)
        key_r, key_c = key_r.reshape(B, T, 2 * w * w), key_c.reshape(B, T, 2 * w * w)  # (B, T, S)
        keys = _slot_map(coords, valid, grid).gather(1, _cell_ids(key_r, key_c, grid).flatten(1)).reshape(B, T, -1)
        in_regular = (torch.div(key_r, w, rounding_mode="floor") == torch.div(r, w, rounding_mode="floor")[..., None]) & (
            torch.div(key_c, w, rounding_mode="floor") == torch.div(c, w, rounding_mode="floor")[..., None]
        )
        repeat = in_regular & (torch.arange(2 * w * w, device=coords.device) >= w * w)  # shifted cells seen already
        allowed = (keys < T) & ~repeat
        bias_index = (key_r - r[..., None] + w - 1) * span + key_c - c[..., None] + w - 1  # both windows hold the query
        return _StagePlan(valid=valid, keys=keys, allowed=allowed, bias_index=_masked(bias_index, allowed, w))

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        sel = self._select(images)
        layout = self._layout(sel["coords"], sel["valid"], sel["grid"])
        x = self._embed(sel)  # (B, K, D)
        if self.scorer is not None:  # straight-through gate: value 1, gradient of the kept scores
            s = sel["scores"].gather(1, sel["order"]).sigmoid()
            x = x * (1 + s - s.detach())[..., None]
        g = self.global_init.repeat(B, 1, 1)  # (B, G, D), a copy: a view of a parameter under no_grad trips module hooks
        pooled = images.new_zeros(B, self.embed_dim)
        attn_for_scorer = None
        for stage, layers in enumerate(self.stages):
            if stage > 0:
                x = self._merge(stage - 1, x, layout)  # (B, K_s, D)
            valid = layout.valid[stage]
            plan = (
                self._plan(layout.coords[stage], valid, layout.grids[stage])
                if any(layer.update_tokens for layer in layers)
                else _StagePlan(valid=valid, keys=None, allowed=None, bias_index=None)  # a global-only stage
            )
            for j, layer in enumerate(layers):
                keep = self.training and self.scorer is not None and stage == 0 and j == self.depth - 1
                g, x = layer(g, x, plan, keep_attn=keep)
                if keep:
                    attn_for_scorer = layer.last_global_attn  # (B, K) global -> patch
            pooled = pooled + self.stage_norms[stage](g.mean(dim=1))
        logits = self.head(pooled)  # (B, classes)

        if not torch.compiler.is_exporting():
            self._last_counts = sel["counts"].detach()
            self._cache = {}
            if self.training and self.scorer is not None:
                self._cache = {
                    "scores": sel["scores"], "order": sel["order"], "valid": sel["valid"], "attn": attn_for_scorer
                }
        return logits

    def _merge(self, transition: int, x: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """Sparse stride-2 downsampling, (B, K, D) -> (B, K', D): LayerNorm, depthwise 2x2 conv over
        the four child slots (absent children are zeros), divided by the children present."""
        B, K, D = x.shape
        children = layout.children[transition]  # (B, K', 4) slots, K = absent
        x = torch.cat([self.merge_norms[transition](x), x.new_zeros(B, 1, D)], dim=1)  # (B, K + 1, D)
        gathered = x.gather(1, children.reshape(B, -1, 1).expand(-1, -1, D)).reshape(B, -1, 4, D)  # (B, K', 4, D)
        # The depthwise 2x2 convolution as the weighted sum it is: its kernel (D, 1, 2, 2) holds a weight
        # per channel and child in the children's (row, col) order. A convolution needed the children
        # moved behind the channels first, a transposed copy that cost more than the merge itself.
        out = (gathered * self.merges[transition].weight.reshape(D, 4).t()).sum(dim=2)  # (B, K', D)
        count = (children < K).sum(dim=-1, keepdim=True).clamp_min(1).to(x.dtype)  # (B, K', 1)
        return out / count

    # --- training signal -------------------------------------------------------------------------
    def auxiliary_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Learned scorer only: distil the global tokens' attention over kept patches, unselected
        patches as negatives; under ``ratio`` the keep-ratio loss instead. Zero for fixed scores."""
        cache, self._cache = self._cache, {}
        if not cache:
            return logits.new_zeros(())
        scores, order, valid = cache["scores"], cache["order"], cache["valid"]
        keep = self.rule.keep_loss(scores, self.k_settings) if self.per_image else None
        if keep is not None:  # the negatives would pull every keep probability under 0.5
            return RATIO_LOSS_WEIGHT * keep
        attn = cache["attn"].detach() * valid  # (B, K)
        attn = attn / attn.amax(dim=1, keepdim=True).clamp_min(1e-12)
        target = torch.zeros_like(scores).scatter(1, order, attn)  # (B, n): 0 at unselected patches
        return self.score_loss_weight * F.binary_cross_entropy_with_logits(scores, target)

    # --- reporting -------------------------------------------------------------------------------
    def _eval_selection(self, images: torch.Tensor) -> dict[str, Any]:
        with eval_mode(self):
            return self._select(images)

    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W): 1 on the pixels of the patches each image keeps, else 0."""
        B, _, H, W = images.shape
        sel = self._eval_selection(images)
        rows, cols = sel["grid"]
        kept = images.new_zeros(B, rows * cols).scatter(1, sel["order"], sel["valid"].to(images.dtype))
        p = self.patch_size
        full = kept.reshape(B, rows, 1, cols, 1).expand(B, rows, p, cols, p).reshape(B, rows * p, cols * p)
        return full[:, :H, :W]

    def flops_at(self, kept: int, grid: tuple[int, int]) -> float:
        """FLOPs of one image's forward with ``kept`` token slots on a ``grid`` of patches."""
        rows, cols = grid
        D, p, C = self.embed_dim, self.patch_size, self.in_channels
        total = linear_flops(kept, self.embed.in_features, D)
        if self.stem is not None:
            total += kept * conv2d_flops(p, p, C, STEM_CHANNELS, 3)
        if self.scorer is not None:
            total += linear_flops(rows * cols, C * p * p, SCORER_HIDDEN) + linear_flops(rows * cols, SCORER_HIDDEN, 1)
        tokens = kept
        for stage, layers in enumerate(self.stages):
            if stage > 0:
                rows, cols = _grid_side(rows, 2), _grid_side(cols, 2)
                tokens = min(tokens, rows * cols)
                total += tokens * conv2d_flops(1, 1, D, D, 2, groups=D)  # the depthwise merge on every parent slot
            total += sum(layer.flops(tokens, self._key_slots(tokens)) for layer in layers)
        return total + linear_flops(1, D, self.num_classes)

    def analytic_flops(self, images: torch.Tensor) -> float:
        """Per-image FLOPs at the current k: what the forward executes, every image at the static
        cap (per-image rules mask the slots an image does not keep; they still run)."""
        patch_grid = self._grid(images)
        return self.flops_at(self._k_for(patch_grid[0] * patch_grid[1]), patch_grid)
