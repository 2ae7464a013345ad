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

Kept patches are gathered (top-k, static shapes) into tokens with integer (row, col) coordinates and
embedded by one linear layer. Each of ``stages`` stages runs ``depth`` transformer blocks in which a
patch attends to the patches sharing its regular ``window`` x ``window`` window or its shifted window
(offset window // 2) -- the union of both partitions at once, as SPAN's default "long" mode -- and to
``global_tokens`` global tokens, which attend to and are attended by every token. Patch-patch scores
carry a learned relative position bias per block and head. (SPAN gives the global graph its own
Q/K/V and sums the two outputs; here one attention runs over the union of both graphs.) Between
stages, sparse stride-2 downsampling halves the coordinates and merges the children present under
each 2x2 parent: their mean (count-normalised, so absent children are not zeros), then LayerNorm and
a linear layer. The mean global token of every stage is normalised and the stages are summed for the
classifier head, as SPAN's ``multi_addition`` readout.

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
static top-k is the cap; patches not kept by an image are masked out of attention, merging and
pooling.

FLOPs convention: the attention is computed as a dense, masked (N x N) product for simplicity and
exportability, but ``analytic_flops`` counts what a sparse kernel computes -- QK^T and AV only at
the allowed query-key pairs of each image's real tokens, and linears / MLPs only on real tokens
(kept patches, present parents, global tokens). A real token has at most its union window and the
global tokens as keys, so FLOPs grow at most linearly with the kept patches for a fixed window and
global-token count (exactly linearly at a fixed density of kept neighbours per window). The
learned scorer runs on every patch and is counted as such. Scoring by foreground or variance,
top-k, gathers, merges (means), norms and activations are excluded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_space.k_rules import K_RULE_DEFAULTS, PER_IMAGE_RULES, per_image_k, ratio_loss
from search_space.strategies.base import CountedKModel, ParamSpec, eval_mode, register_strategy, transformer_params
from search_space.strategies.blocks import ClassifierHead, TransformerBlock, linear_flops, mlp_flops, top_indices

KEEP_SCORES = ("foreground", "variance", "learned")
SCORER_HIDDEN = 16  # width of the learned patch scorer
RATIO_LOSS_WEIGHT = 2.0  # DynamicViT's weight on the keep-ratio loss
_TIE_BREAK = 1e-6  # equal scores prefer patches nearer the centre (cells are centred), deterministically


def _grid_side(size: int, patch_size: int) -> int:
    return -(-size // patch_size)


class _Layout:
    """Where the real tokens of every stage are: (B, K_s, 2) coords, (B, K_s) validity, and how the
    tokens of stage s - 1 merge into those of stage s (parent slot of each child, parent counts)."""

    def __init__(self) -> None:
        self.coords: list[torch.Tensor] = []
        self.valid: list[torch.Tensor] = []
        self.parent_id: list[torch.Tensor] = []  # per transition: (B, K_{s-1}) parent cell id of each child
        self.parent_cells: list[torch.Tensor] = []  # per transition: (B, K_s) cell id held by each slot
        self.parent_count: list[torch.Tensor] = []  # per transition: (B, K_s) present children per slot
        self.n_cells: list[int] = []  # per transition: cells in the parent grid


@register_strategy(
    "span_pyramid",
    params={
        "patch_size": ParamSpec("int", 2, 16, default=4, doc="patch side in pixels (the integer grid)"),
        "keep_score": ParamSpec("choice", choices=KEEP_SCORES, default="foreground", doc="how informative patches are scored"),
        "keep_fraction": ParamSpec(
            "float", 0.0, 1.0, low_open=True, default=0.5, doc="initial k as a fraction of the patches"
        ),
        **transformer_params(embed_dim=32, num_heads=2, depth=1, mlp_ratio=2.0, depth_doc="transformer blocks per stage"),
        "stages": ParamSpec("int", 1, 4, default=2, doc="pyramid stages, stride-2 sparse downsampling between them"),
        "window": ParamSpec("int", 2, 8, default=4, doc="window side in grid cells (shifted windows offset by half)"),
        "global_tokens": ParamSpec("int", 1, 4, default=1, doc="global tokens attending to and from every token"),
        "score_loss_weight": ParamSpec(
            "float", 0.0, 10.0, default=1.0, doc="learned scorer: weight of its distillation loss"
        ),
    },
    sparse=True,
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
        self.in_channels, self.num_classes, self.patch_size = in_channels, num_classes, patch_size
        self.keep_score, self.embed_dim, self.num_heads = keep_score, embed_dim, num_heads
        self.depth, self.mlp_ratio, self.window, self.global_tokens = depth, mlp_ratio, window, global_tokens
        self.score_loss_weight = score_loss_weight
        self.k_rule, self.k_rule_config = k_rule, dict(k_rule_config or {})
        side = _grid_side(image_size, patch_size)
        self.n_patches = side * side
        self.per_image = k_rule in PER_IMAGE_RULES and not (k_rule == "ratio" and keep_score != "learned")
        if k_rule == "ratio" and keep_score != "learned":
            keep_fraction = self._target_ratio()
        self._k = min(max(round(keep_fraction * self.n_patches), 1), self.n_patches)

        patch_dim = in_channels * patch_size * patch_size
        self.scorer = (
            nn.Sequential(nn.Linear(patch_dim, SCORER_HIDDEN), nn.GELU(), nn.Linear(SCORER_HIDDEN, 1))
            if keep_score == "learned"
            else None
        )
        self.embed = nn.Linear(patch_dim, embed_dim)
        self.global_init = nn.Parameter(torch.zeros(1, global_tokens, embed_dim))
        nn.init.trunc_normal_(self.global_init, std=0.02)
        self.stages = nn.ModuleList(
            nn.ModuleList(TransformerBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio) for _ in range(depth))
            for _ in range(stages)
        )
        # Relative position bias per stage, block and head, indexed by (d_row, d_col) in [-(w-1), w-1]^2.
        self.rel_bias = nn.Parameter(torch.zeros(stages, depth, num_heads, (2 * window - 1) ** 2))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.merges = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim)) for _ in range(stages - 1)
        )
        self.stage_norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(stages))
        self.head = ClassifierHead(dim=embed_dim, num_classes=num_classes)
        self._last_counts: torch.Tensor | None = None  # (B,) patches kept per image by the last forward
        self._cache: dict[str, torch.Tensor] = {}

    def _target_ratio(self) -> float:
        return float(self.k_rule_config.get("k_target_ratio", K_RULE_DEFAULTS["k_target_ratio"]))

    # --- k ---------------------------------------------------------------------------------------
    def k_bounds(self) -> tuple[int, int]:
        return 1, self.n_patches


    # --- selection -------------------------------------------------------------------------------
    def _patches(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(B, C, H, W) -> (B, n, C*p*p) patch pixels on the integer grid, and the grid's (rows, cols)."""
        B, C, H, W = images.shape
        p = self.patch_size
        rows, cols = _grid_side(H, p), _grid_side(W, p)
        if rows * p != H or cols * p != W:
            images = F.pad(images, (0, cols * p - W, 0, rows * p - H), mode="replicate")
        patches = images.reshape(B, C, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, p, p)
        return patches.reshape(B, rows * cols, C * p * p), rows, cols

    def _scores(self, images: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """(B, n) informativeness of every patch (logits for ``learned``)."""
        B, C = images.shape[:2]
        if self.scorer is not None:
            return self.scorer(patches).squeeze(-1)
        pix = patches.reshape(B, patches.shape[1], C, -1)  # (B, n, C, p*p)
        if self.keep_score == "variance":
            return pix.var(dim=-1, unbiased=False).mean(dim=-1)
        border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=-1)
        background = border.median(dim=-1).values  # (B, C)
        return (pix - background[:, None, :, None]).abs().mean(dim=(2, 3))

    @staticmethod
    def _centre_preference(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """(rows*cols,) in [-1, 0]: minus the normalised distance of each patch from the grid centre."""
        r = torch.arange(rows, device=like.device, dtype=like.dtype) - (rows - 1) / 2
        c = torch.arange(cols, device=like.device, dtype=like.dtype) - (cols - 1) / 2
        dist = (r[:, None] ** 2 + c[None, :] ** 2).sqrt().flatten()
        return -dist / dist.max().clamp_min(1e-12)

    def _select(self, images: torch.Tensor) -> dict[str, Any]:
        """Score the patches and keep the top K: pixels, order, coords and validity of the kept."""
        patches, rows, cols = self._patches(images)  # (B, n, P)
        n = rows * cols
        scores = self._scores(images, patches)  # (B, n)
        K = self._k if n == self.n_patches else min(max(round(self._k * n / self.n_patches), 1), n)
        ranked = scores.detach() + _TIE_BREAK * self._centre_preference(rows, cols, scores)
        order = top_indices(ranked, K)  # (B, K), best first
        row = torch.div(order, cols, rounding_mode="floor")
        coords = torch.stack([row, order - row * cols], dim=-1)  # (B, K, 2) integer (row, col)
        rank = torch.arange(K, device=order.device)[None, :]  # (1, K)
        if self.per_image and self.k_rule == "ratio" and self.training:
            # DynamicViT: sampled keep decisions while training, kept with probability sigmoid(score).
            kept_logits = scores.gather(1, order)  # (B, K)
            u = torch.rand_like(kept_logits).clamp(1e-6, 1 - 1e-6)
            valid = (kept_logits.detach() + torch.log(u) - torch.log1p(-u) > 0) | (rank == 0)  # (B, K)
            counts = valid.sum(dim=1)
        else:
            if self.per_image and self.k_rule == "ratio":
                # Eval keeps the expected number of sampled keeps, the count the ratio loss controls.
                counts = scores.sigmoid().sum(dim=1).round().long().clamp(1, K)  # (B,)
            elif self.per_image:
                mass = scores.sigmoid() if self.scorer is not None else scores.clamp_min(0)
                counts = per_image_k(mass, rule=self.k_rule, config=self.k_rule_config, k_max=K)  # (B,)
            else:
                counts = order.new_full((images.shape[0],), K)
            valid = rank < counts[:, None]  # (B, K): each image keeps a prefix of its ranking
        return {
            "patches": patches, "scores": scores, "order": order, "coords": coords, "valid": valid,
            "counts": counts, "grid": (rows, cols),
        }

    def _layout(self, coords: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int]) -> _Layout:
        """Coordinates and validity of every stage's tokens after sparse stride-2 downsampling."""
        layout = _Layout()
        layout.coords.append(coords)
        layout.valid.append(valid)
        rows, cols = grid
        for _ in range(len(self.stages) - 1):
            rows, cols = _grid_side(rows, 2), _grid_side(cols, 2)
            M, K = rows * cols, coords.shape[1]
            pid = torch.div(coords[..., 0], 2, rounding_mode="floor") * cols + torch.div(
                coords[..., 1], 2, rounding_mode="floor"
            )  # (B, K) parent cell of each child
            counts = valid.new_zeros(valid.shape[0], M, dtype=torch.float32).scatter_add(1, pid, valid.float())
            present_first = (counts > 0).float() * 2 - torch.arange(M, device=counts.device) / M  # id order
            cells = top_indices(present_first, min(K, M))  # (B, K'): present parents first
            count = counts.gather(1, cells)
            row = torch.div(cells, cols, rounding_mode="floor")
            coords, valid = torch.stack([row, cells - row * cols], dim=-1), count > 0
            layout.parent_id.append(pid)
            layout.parent_cells.append(cells)
            layout.parent_count.append(count)
            layout.n_cells.append(M)
            layout.coords.append(coords)
            layout.valid.append(valid)
        return layout

    def _allowed(self, coords: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, G+K, G+K) bool: which query (row) may attend which key (column); globals come first."""
        B, K = valid.shape
        G, w = self.global_tokens, self.window
        r, c = coords[..., 0], coords[..., 1]
        shift = w // 2

        def same(a: torch.Tensor) -> torch.Tensor:
            return a[:, :, None] == a[:, None, :]  # (B, K, K)

        def cell(v: torch.Tensor, offset: int) -> torch.Tensor:
            return torch.div(v + offset, w, rounding_mode="floor")

        regular = same(cell(r, 0)) & same(cell(c, 0))
        shifted = same(cell(r, shift)) & same(cell(c, shift))
        patch = (regular | shifted) & valid[:, :, None] & valid[:, None, :]  # (B, K, K)
        top = torch.cat([valid.new_ones(B, G, G), valid[:, None, :].expand(B, G, K)], dim=2)
        bottom = torch.cat([valid.new_ones(B, K, G), patch], dim=2)
        return torch.cat([top, bottom], dim=1)  # padding queries see the globals only: no empty rows

    def _bias(self, coords: torch.Tensor, allowed: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, N) additive scores: relative position bias on allowed patch pairs, -inf elsewhere."""
        w, G = self.window, self.global_tokens
        d = coords[:, :, None, :] - coords[:, None, :, :]  # (B, K, K, 2)
        d = d.clamp(-(w - 1), w - 1) + (w - 1)
        idx = d[..., 0] * (2 * w - 1) + d[..., 1]  # (B, K, K)
        bias = table[:, idx].permute(1, 0, 2, 3)  # (B, heads, K, K)
        bias = F.pad(bias, (G, 0, G, 0))  # global pairs carry no position bias
        return bias.masked_fill(~allowed[:, None], float("-inf"))

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        sel = self._select(images)
        layout = self._layout(sel["coords"], sel["valid"], sel["grid"])
        P = sel["patches"].shape[-1]
        x = self.embed(sel["patches"].gather(1, sel["order"][..., None].expand(-1, -1, P)))  # (B, K, D)
        if self.scorer is not None:  # straight-through gate: value 1, gradient of the kept scores
            s = sel["scores"].gather(1, sel["order"]).sigmoid()
            x = x * (1 + s - s.detach())[..., None]
        G = self.global_tokens
        g = self.global_init.expand(B, -1, -1)  # (B, G, D)
        pooled = images.new_zeros(B, self.embed_dim)
        attn_for_scorer = None
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                x = self._merge(stage - 1, x, layout)  # (B, K_s, D)
            coords, valid = layout.coords[stage], layout.valid[stage]
            allowed = self._allowed(coords, valid)
            h = torch.cat([g, x], dim=1)  # (B, G + K_s, D)
            for j, block in enumerate(blocks):
                keep = self.training and self.scorer is not None and stage == 0 and j == self.depth - 1
                h = block(h, bias=self._bias(coords, allowed, self.rel_bias[stage, j]), keep_attn=keep)
                if keep:
                    attn_for_scorer = block.attn.last_attn[:, :, :G, G:].mean(dim=(1, 2))  # (B, K) global->patch
            g, x = h[:, :G], h[:, G:]
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
        """Mean of the present children under each parent, then LayerNorm + linear: (B, K, D) -> (B, K', D)."""
        B, _, D = x.shape
        pid, cells = layout.parent_id[transition], layout.parent_cells[transition]
        child_valid = layout.valid[transition]
        sums = x.new_zeros(B, layout.n_cells[transition], D).scatter_add(
            1, pid[..., None].expand(-1, -1, D), x * child_valid[..., None].to(x.dtype)
        )
        count = layout.parent_count[transition].clamp_min(1).to(x.dtype)  # (B, K')
        mean = sums.gather(1, cells[..., None].expand(-1, -1, D)) / count[..., None]  # (B, K', D)
        return self.merges[transition](mean)

    # --- training signal -------------------------------------------------------------------------
    def auxiliary_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Learned scorer only: distil the global tokens' attention over kept patches, unselected
        patches as negatives; under ``ratio`` the keep-ratio loss instead. Zero for fixed scores."""
        cache, self._cache = self._cache, {}
        if not cache:
            return logits.new_zeros(())
        scores, order, valid = cache["scores"], cache["order"], cache["valid"]
        if self.k_rule == "ratio":  # the negatives would pull every keep probability under 0.5
            return RATIO_LOSS_WEIGHT * ratio_loss(scores.sigmoid(), self._target_ratio())
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

    def analytic_flops(self, images: torch.Tensor) -> float:
        """Mean per-image FLOPs at the current k, counting only real tokens and allowed pairs."""
        sel = self._eval_selection(images)
        with torch.no_grad():
            layout = self._layout(sel["coords"], sel["valid"], sel["grid"])
        D, G = self.embed_dim, self.global_tokens
        P = sel["patches"].shape[-1]
        n_patches = sel["patches"].shape[1]
        per_image = linear_flops(sel["valid"].sum(dim=1).double(), P, D)  # (B,) embedding of kept patches
        if self.scorer is not None:
            per_image = per_image + linear_flops(n_patches, P, SCORER_HIDDEN) + linear_flops(n_patches, SCORER_HIDDEN, 1)
        for stage in range(len(self.stages)):
            valid = layout.valid[stage]
            tokens = valid.sum(dim=1).double() + G  # (B,) real tokens
            if stage > 0:
                per_image = per_image + linear_flops(valid.sum(dim=1).double(), D, D)  # merge linear
            allowed = self._allowed(layout.coords[stage], valid)
            real_query = torch.cat([valid.new_ones(valid.shape[0], G), valid], dim=1)  # (B, N)
            pairs = (allowed & real_query[:, :, None]).sum(dim=(1, 2)).double()  # (B,)
            per_block = (
                linear_flops(tokens, D, 3 * D) + linear_flops(tokens, D, D)  # qkv and output projections
                + 4.0 * pairs * D  # QK^T and AV at the allowed pairs, all heads together
                + mlp_flops(tokens, D, self.mlp_ratio)
            )
            per_image = per_image + self.depth * per_block
        return float(per_image.mean()) + linear_flops(1, D, self.num_classes)
