"""``tnet_traversal``: TNet (Papadopoulos et al., arXiv 2102.10212), multi-scale hard attention.

One small CNN (the backbone) sees the whole image downscaled to ``base_resolution``. A location
module scores a ``grid_size`` x ``grid_size`` grid of regions from the backbone's feature map; the
top ``regions`` cells are cropped from the full-resolution image, resized to the base resolution and
run through the same backbone. This recurses for ``levels`` levels (level 0 is the whole image).
Every view's feature gets a (y, x, level) positional encoding; the features are mean- or
attention-pooled and classified by one linear head, shared with the per-glimpse loss.

k is ``regions``: the number of cells attended *per level*. At level 1 they are the top cells of
the one grid over the whole image; at deeper levels the candidates are all cells of all regions
attended at the previous level, scored by one softmax over them, so a model always runs
``1 + regions * (levels - 1)`` backbone passes and its FLOPs grow linearly in k. The per-image
k rules (``ratio``, ``top_p``) have no meaning for a fixed glimpse budget: this model keeps the
configured ``regions`` under them.

Training follows the released code: the location module sees detached inputs and learns only by
REINFORCE (reward = the pooled prediction is correct, baseline = a moving average of the reward
kept as a buffer); the backbone, positional encoding and head learn from cross-entropy, including
a per-glimpse cross-entropy through the shared head. Both extra terms are in ``auxiliary_loss``,
computed from state cached by the training forward. Selection is the deterministic top-k of the
released code unless ``gumbel_explore`` samples it (Gumbel top-k, Plackett-Luce log-probability)
during training; evaluation is always the deterministic top-k.

Cropping builds a sampling grid per view and calls ``F.grid_sample`` (static shapes, exportable),
super-sampling and average-pooling when a crop is much larger than the base resolution so that
downscaling does not alias.

FLOPs (2 per multiply-accumulate): backbone convolutions and linears for every view, the location
module on every view that is scored, the positional projection, attention pooling and the head.
Cropping, resizing, pooling and top-k are indexing/interpolation and are not counted, so FLOPs do
not depend on the image size.

``used_map`` is the fraction of full-resolution pixels each image pixel was seen at: a view of side
s pixels sampled at base resolution b resolves min(1, (b / s)^2) of the pixels it covers, and each
pixel takes the best view covering it. The whole-image view therefore shows as a low floor
(b^2 / (H W)) and attended crops as brighter squares (1 where a crop is seen at native resolution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from search_space.strategies.base import CellClassifier, ParamSpec, register_strategy
from search_space.strategies.blocks import ClassifierHead, conv2d_flops, linear_flops, top_indices

_PE_FREQS = (1.0, 2.0, 4.0, 8.0)  # sine/cosine frequencies (in units of pi/2) per (y, x, level) coordinate
_PE_DIM = 3 * 2 * len(_PE_FREQS)
_MAX_SUPERSAMPLE = 4


def _conv_norm_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: the backbone runs once per level, so BatchNorm would normalise each
    # level by its own batch statistics in training but by their blended running averages in eval.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(math.gcd(4, c_out), c_out), nn.ReLU()
    )


def _conv_out(size: int, stride: int) -> int:
    """Output side of a 3x3, padding-1 convolution."""
    return (size - 1) // stride + 1


class _Backbone(nn.Module):
    """Small CNN run on every view at base resolution: a pooled feature and a G x G map to score."""

    def __init__(self, *, in_channels: int, width: int, embed_dim: int, grid_size: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.convs = nn.Sequential(
            _conv_norm_relu(in_channels, width, 1),
            _conv_norm_relu(width, 2 * width, 2),
            _conv_norm_relu(2 * width, 4 * width, 2),
        )
        self.proj = nn.Linear(4 * width, embed_dim)

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.convs(views)  # (n, 4w, b/4, b/4)
        grid = F.adaptive_avg_pool2d(fmap, self.grid_size)  # (n, 4w, G, G)
        return self.proj(fmap.mean(dim=(2, 3))), grid  # (n, D), (n, 4w, G, G)


class _LocationModule(nn.Module):
    """Scores the G x G cells of a view from detached features; logits are L2-normalised as in TNet."""

    def __init__(self, *, map_channels: int, embed_dim: int, grid_size: int, hidden: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.conv1 = nn.Conv2d(map_channels + embed_dim + 2, hidden, 1)
        self.act = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(hidden, 1, 1)
        axis = torch.linspace(-1.0, 1.0, grid_size)
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("cell_coords", torch.stack([yy, xx])[None], persistent=False)  # (1, 2, G, G)

    def forward(self, grid: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        n, G = grid.shape[0], self.grid_size
        x = torch.cat([grid, feat[:, :, None, None].expand(-1, -1, G, G), self.cell_coords.expand(n, -1, -1, -1)], 1)
        logits = self.conv2(self.act(self.conv1(x.detach()))).flatten(1)  # (n, G*G)
        return F.normalize(logits, dim=1)


@register_strategy(
    "tnet_traversal",
    params={
        "base_resolution": ParamSpec("int", 8, 48, default=16, doc="side in pixels every view is resized to"),
        "grid_size": ParamSpec("int", 2, 5, default=3, doc="G: each view is scored as a G x G grid of regions"),
        "regions": ParamSpec("int", 1, 8, default=2, doc="k: regions attended per level (at most grid_size**2)"),
        "levels": ParamSpec("int", 2, 4, default=2, doc="scale levels, counting the whole-image view"),
        "overlap": ParamSpec("float", 0.2, 0.8, default=0.5, doc="side of a child region as a fraction of its parent"),
        "width": ParamSpec("int", 4, 64, default=8, doc="backbone channels of the first conv (then 2x, 4x)"),
        "embed_dim": ParamSpec("int", 8, 256, default=32, doc="feature dimension of a view"),
        "pooling": ParamSpec("choice", choices=("mean", "attention"), default="mean", doc="how view features are combined"),
        "gumbel_explore": ParamSpec("bool", default=False, doc="sample regions by Gumbel top-k while training"),
        "glimpse_loss_weight": ParamSpec("float", 0.0, 2.0, default=0.5, doc="weight of the per-glimpse cross-entropy"),
        "reinforce_weight": ParamSpec("float", 0.0, 1.0, default=0.1, doc="weight of the REINFORCE term"),
    },
    sparse=True,
    uses_k_rule=True,
    doc="TNet: recursive top-k glimpses through one small CNN; location module trained by REINFORCE.",
)
class TNetTraversal(CellClassifier):
    """Recursive top-k glimpses through one shared backbone; see the module docstring."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        base_resolution: int,
        grid_size: int,
        regions: int,
        levels: int,
        overlap: float,
        width: int,
        embed_dim: int,
        pooling: str,
        gumbel_explore: bool,
        glimpse_loss_weight: float,
        reinforce_weight: float,
        baseline_decay: float = 0.9,
    ) -> None:
        super().__init__()
        if levels < 2 or grid_size < 2:
            raise ValueError(f"levels={levels} and grid_size={grid_size} must both be >= 2 (at least one glimpse level)")
        if not 1 <= regions <= grid_size**2:
            raise ValueError(f"regions={regions} must lie in [1, grid_size**2={grid_size**2}]")
        if pooling not in ("mean", "attention"):
            raise ValueError(f"pooling={pooling!r} must be 'mean' or 'attention'")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.base_resolution, self.grid_size, self.levels = base_resolution, grid_size, levels
        self.overlap, self.width, self.embed_dim, self.pooling = overlap, width, embed_dim, pooling
        self.gumbel_explore = gumbel_explore
        self.glimpse_loss_weight, self.reinforce_weight = glimpse_loss_weight, reinforce_weight
        self.baseline_decay = baseline_decay
        self._k = regions

        self.backbone = _Backbone(in_channels=in_channels, width=width, embed_dim=embed_dim, grid_size=grid_size)
        self.locate = _LocationModule(
            map_channels=4 * width, embed_dim=embed_dim, grid_size=grid_size, hidden=embed_dim
        )
        self.pos = nn.Linear(_PE_DIM, embed_dim)
        self.pool_score = nn.Linear(embed_dim, 1) if pooling == "attention" else None
        self.head = ClassifierHead(dim=embed_dim, num_classes=num_classes)

        # Half-side of a view at each level, in [-1, 1] image coordinates (level 0: the whole image).
        self.half_sizes = [overlap**level for level in range(levels)]
        # Offset of each child cell's centre from its parent's centre, per child level: (levels-1, G*G, 2).
        offsets = []
        for level in range(1, levels):
            parent, child = self.half_sizes[level - 1], self.half_sizes[level]
            axis = -parent + child + torch.arange(grid_size) * (2 * (parent - child) / (grid_size - 1))
            yy, xx = torch.meshgrid(axis, axis, indexing="ij")
            offsets.append(torch.stack([yy.flatten(), xx.flatten()], dim=1))
        self.register_buffer("cell_offsets", torch.stack(offsets) if offsets else torch.zeros(0, 1, 2), persistent=False)
        # Moving average of the REINFORCE reward; starts at chance accuracy.
        self.register_buffer("reward_baseline", torch.tensor(1.0 / num_classes))
        self._cache: dict[str, torch.Tensor] | None = None

    # --- k ---------------------------------------------------------------------------------------
    def k_bounds(self) -> tuple[int, int]:
        return 1, self.grid_size**2

    @property
    def k(self) -> float:
        return float(self._k)

    def set_k(self, k: int) -> None:
        low, high = self.k_bounds()
        if not low <= int(k) <= high:
            raise ValueError(f"k={k} must lie in [{low}, {high}] (regions per level)")
        self._k = int(k)

    def n_views(self) -> int:
        """Backbone passes per image: the whole image plus ``regions`` crops per deeper level."""
        return 1 + self._k * (self.levels - 1)

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens, _, logp = self._traverse(images)  # (B, N, D), centres per level, (B,)
        if self.pool_score is None:
            pooled = tokens.mean(dim=1)  # (B, D)
        else:
            weights = self.pool_score(tokens).softmax(dim=1)  # (B, N, 1)
            pooled = (weights * tokens).sum(dim=1)
        logits = self.head(pooled)  # (B, classes)
        if self.training:
            self._cache = {"logp": logp, "glimpse_logits": self.head(tokens)}  # (B,), (B, N, classes)
        return logits

    def _traverse(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Run every level; return view tokens (B, N, D), view centres per level, and log pi (B,)."""
        B = images.shape[0]
        G2 = self.grid_size**2
        centres = images.new_zeros(B, 1, 2)  # (B, n, 2) view centres (y, x) in [-1, 1]
        feat, grid = self._look(images, centres, level=0)  # (B, n, D), (B*n, 4w, G, G)
        tokens, all_centres = [feat + self._position(centres, 0)], [centres]
        logp = images.new_zeros(B)
        for level in range(1, self.levels):
            n = centres.shape[1]
            log_pi = self.locate(grid, feat.flatten(0, 1)).reshape(B, n * G2).log_softmax(dim=1)  # (B, n*G2)
            idx, step_logp = self._choose(log_pi)  # (B, k), (B,)
            logp = logp + step_logp
            parent = torch.div(idx, G2, rounding_mode="floor")
            cell = idx - parent * G2
            centres = centres.gather(1, parent[..., None].expand(-1, -1, 2)) + self.cell_offsets[level - 1][cell]
            feat, grid = self._look(images, centres, level)
            tokens.append(feat + self._position(centres, level))
            all_centres.append(centres)
        return torch.cat(tokens, dim=1), all_centres, logp

    def _choose(self, log_pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k cells (Gumbel-perturbed in training when exploring) and the log-probability of the pick."""
        k = self._k
        if self.training and self.gumbel_explore:
            gumbel = -torch.log(-torch.log(torch.rand_like(log_pi).clamp(1e-10, 1.0 - 1e-7)))
            idx = (log_pi.detach() + gumbel).topk(k, dim=1).indices  # (B, k), in draw order
            chosen = log_pi.gather(1, idx)
            taken = chosen.exp().cumsum(dim=1) - chosen.exp()  # mass drawn before each pick
            return idx, (chosen - torch.log1p(-taken.clamp(max=1.0 - 1e-6))).sum(dim=1)  # Plackett-Luce
        idx = top_indices(log_pi, k)
        return idx, log_pi.gather(1, idx).sum(dim=1)  # faithful: sum of the chosen cells' log pi

    def _look(self, images: torch.Tensor, centres: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop every view (B, n, 2 centres) at this level's size, resize to base, run the backbone."""
        B, C, H, W = images.shape
        n, b, half = centres.shape[1], self.base_resolution, self.half_sizes[level]
        ss = max(1, min(_MAX_SUPERSAMPLE, round(half * max(H, W) / b)))  # samples per output pixel side
        side = b * ss
        axis = (2 * torch.arange(side, device=images.device, dtype=images.dtype) + 1) / side - 1  # pixel centres
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        base = torch.stack([xx, yy], dim=-1) * half  # (side, side, 2), grid_sample wants (x, y)
        grid = base + centres.flip(-1)[:, :, None, None, :]  # (B, n, side, side, 2)
        crops = F.grid_sample(
            images, grid.reshape(B, n * side, side, 2), mode="bilinear", padding_mode="border", align_corners=False
        )  # (B, C, n*side, side)
        crops = crops.reshape(B, C, n, side, side).transpose(1, 2).reshape(B * n, C, side, side)
        if ss > 1:
            crops = F.avg_pool2d(crops, ss)  # (B*n, C, b, b)
        feat, grid_map = self.backbone(crops)
        return feat.reshape(B, n, -1), grid_map

    def _position(self, centres: torch.Tensor, level: int) -> torch.Tensor:
        """(B, n, 2) centres at ``level`` -> (B, n, D) positional embedding of (y, x, level)."""
        lvl = centres.new_full(centres.shape[:-1] + (1,), level / max(self.levels - 1, 1))
        coords = torch.cat([centres, lvl], dim=-1)  # (B, n, 3)
        freqs = coords.new_tensor(_PE_FREQS) * (math.pi / 2)
        angles = (coords[..., None] * freqs).flatten(-2)  # (B, n, 3 * F)
        return self.pos(torch.cat([angles.sin(), angles.cos()], dim=-1))

    # --- training signal -------------------------------------------------------------------------
    def auxiliary_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-glimpse cross-entropy plus REINFORCE for the location module (moving-average baseline)."""
        cache, self._cache = self._cache, None
        if cache is None:
            return logits.new_zeros(())
        glimpse_logits = cache["glimpse_logits"]  # (B, N, classes)
        n = glimpse_logits.shape[1]
        glimpse_ce = F.cross_entropy(glimpse_logits.flatten(0, 1), targets.repeat_interleave(n))
        reward = (logits.detach().argmax(dim=1) == targets).to(logits.dtype)  # (B,)
        advantage = reward - self.reward_baseline
        reinforce = -(advantage * cache["logp"]).mean()
        with torch.no_grad():
            self.reward_baseline.mul_(self.baseline_decay).add_((1 - self.baseline_decay) * reward.mean())
        return self.glimpse_loss_weight * glimpse_ce + self.reinforce_weight * reinforce

    # --- reporting -------------------------------------------------------------------------------
    @torch.no_grad()
    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) fraction of full-resolution pixels resolved at each pixel by its best view."""
        B, _, H, W = images.shape
        was_training = self.training
        self.eval()  # the map shows the deterministic eval selection
        try:
            _, all_centres, _ = self._traverse(images)
        finally:
            self.train(was_training)
        py = (2 * torch.arange(H, device=images.device, dtype=images.dtype) + 1) / H - 1
        px = (2 * torch.arange(W, device=images.device, dtype=images.dtype) + 1) / W - 1
        used = images.new_zeros(B, H, W)
        for level, centres in enumerate(all_centres):
            half = self.half_sizes[level]
            density = min(1.0, self.base_resolution**2 / ((half * H) * (half * W)))
            inside_y = (py[None, None, :] - centres[..., 0:1]).abs() <= half + 1e-6  # (B, n, H)
            inside_x = (px[None, None, :] - centres[..., 1:2]).abs() <= half + 1e-6  # (B, n, W)
            covered = (inside_y[..., :, None] & inside_x[..., None, :]).any(dim=1)  # (B, H, W)
            used = torch.maximum(used, covered.to(images.dtype) * density)
        return used

    def analytic_flops(self, images: torch.Tensor) -> float:
        """Per-image inference FLOPs; the same for every image and every image size."""
        b, w, D, G = self.base_resolution, self.width, self.embed_dim, self.grid_size
        s1 = _conv_out(b, 1)
        s2 = _conv_out(s1, 2)
        s3 = _conv_out(s2, 2)
        backbone = (
            conv2d_flops(s1, s1, self.in_channels, w, 3)
            + conv2d_flops(s2, s2, w, 2 * w, 3)
            + conv2d_flops(s3, s3, 2 * w, 4 * w, 3)
            + linear_flops(1, 4 * w, D)
        )
        location = conv2d_flops(G, G, 4 * w + D + 2, D, 1) + conv2d_flops(G, G, D, 1, 1)
        scored_views = 1 + self._k * (self.levels - 2)  # every view but the last level's
        views = self.n_views()
        per_view = backbone + linear_flops(1, _PE_DIM, D) + (linear_flops(1, D, 1) if self.pool_score else 0.0)
        return views * per_view + scored_views * location + linear_flops(1, D, self.num_classes)
