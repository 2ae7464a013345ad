"""``tnet_traversal``: TNet (Papadopoulos et al., arXiv 2102.10212), multi-scale hard attention.

One encoder (the backbone) sees the whole image downscaled to ``base_resolution``. A location module
scores a ``grid_size`` x ``grid_size`` grid of cells over that view; the top ``regions`` cells are
cropped from the full-resolution image, resized to the base resolution and run through the same
backbone, and each of them is scored and split again, for ``levels`` levels (level 0 is the whole
image). Every view's feature gets a (y, x, level) positional encoding; the features are mean- or
attention-pooled and classified by one linear head, shared with the per-glimpse loss.

The backbone is the dense baseline's own encoder (``dense_cnn``'s stem and residual stages, one
basic block per stage, ``width`` and ``stages`` searchable): the paper allows any classifier as its
backbone, and TNet's views should be seen as well as the dense baseline sees whole images. It runs
once per level on different content (a downscaled whole image, then crops), so one BatchNorm would
normalise each level by its own batch statistics in training but by one blended running average in
eval. ``norm`` chooses between two answers: ``group`` (the default) normalises each view by itself,
identically in both; ``batch`` gives every level a BatchNorm of its own (statistics and affine; the
convolutions are shared). GroupNorm erases what a view's overall contrast says: on synthetic fields,
where the class is in the grain of a small cell's texture, TNet under GroupNorm stayed near chance
and ``batch`` learns (docs/benchmarks.md, "The goal on fields", the GroupNorm ablation).

``location_prior: foreground`` adds an image-driven prior to the location module's normalised
logits: each grid cell's mean |pixel - background| over its view (the background being the
per-channel median of the image's border, span_pyramid's ``foreground`` score), standardised per
view, times ``FOREGROUND_PRIOR_WEIGHT``. A stained cell in a pale smear is where the stain is;
REINFORCE alone has to find it from rewards that are noise while the classifier is at chance, and on
1%-share targets it never did (the "no prior" ablation in the same section). The prior starts the
traversal on the stain, and REINFORCE learns on top of it.

The location module reads an intermediate feature map, as the released code does (a mid-network map
at grid resolution): the output of the second-to-last stage (the stem's when ``stages`` is 1), whose
positions see a local neighbourhood. Each grid cell's feature is that map averaged over exactly the
cell's area (a fixed (G, s) matrix on each side, so the cells overlap as the crops do), concatenated
with the view's pooled feature and the cell's (y, x); two 1x1 convolutions give one logit per cell,
L2-normalised as in TNet, and a softmax per view gives pi over its G x G cells.

k is ``regions``: the cells attended *inside each parent view*, top-k per parent at every level, so
a model runs ``1 + k + k**2 + ... + k**(levels - 1)`` backbone passes. Every child lies inside its
parent. The per-image k rules (``ratio``, ``top_p``) have no meaning for a fixed glimpse budget:
under them this model keeps the configured ``regions``.

Where it pays: a large frame with one small target whose cues a shrink erases. On 256-px synthetic
fields (a 32-px cell, 1.2% of the frame; 3 seeds, 15 epochs) three levels with the last one near
native resolution (base 40, views 0.45 of their parent), BatchNorm per level and the foreground prior
reach 65.0% test at 31.7 MFLOPs (24% of the native dense CNN's), 13 points above the dense CNN at
the same FLOPs (a 2x shrink, 52%) and 12 below it at native size (76.7%), with 7x random's share of
its views on the target; without the prior, 22% (chance is 20%). Where the cell fills much of the
frame (cells64, rbc64, pbc28) a dense CNN on a smaller copy holds the front (docs/benchmarks.md,
"The goal on fields" and "The regime map").

Training follows the released code, with two changes that measurements called for. The
location module sees detached inputs and learns only by REINFORCE; the backbone, positional
encoding and head learn only from cross-entropy (main, and per-glimpse through the shared head,
weighted ``glimpse_loss_weight``). REINFORCE has two terms, mixed by ``glimpse_reward_share`` (the
code's 1 - perFReg_reinf_weight): the image's reward (its pooled prediction is correct) times the
summed log pi of every attended cell, and per glimpse, that glimpse's own reward (its own prediction
through the head is correct) times its own cell's log pi. Both subtract one baseline, a moving
average (decay 0.9) of the same mix of rewards, kept as a buffer. ``reinforce_weight`` = 0 switches
the location module's learning off (the ablation the benchmark runs).

The changes. (1) A glimpse's own prediction reads its content only, not its positional encoding:
the location module sees the whole image, so it can pick a class-dependent place, and a glimpse
whose token carries that place is then "correct" wherever it looks; its reward says nothing about
what it saw. (2) ``gumbel_explore`` (default on) samples the cells while training (Gumbel top-k per parent,
Plackett-Luce log-probabilities), as REINFORCE assumes. The released code's deterministic top-k
only ever rewards the cells it already picks, and once the head fits those glimpses every reward is
1 and the selector stops learning: on blob images the picked cell's share of the blob ends at
0.29-0.40 with top-k and 0.45 with sampling; on the default synthetic cells (32 px, 10 epochs) the
share of attended pixels inside the cell is 1.0x what random selection gets with top-k and 2.2-2.3x
with sampling (1.1-1.5x with ``reinforce_weight`` = 0; two seeds each). Evaluation is always the deterministic
top-k (a stable sort, so exported models pick the same cells). What still limits the selection on
those cells is the reward itself: every glimpse near the cell classifies about as well as the one
centred on it, so REINFORCE learns to avoid the background more than to centre; crops smaller than
the cell (``overlap`` 0.4 at 32 px, against 1.9-2.1x at 0.45) make the difference count.

Cropping samples each view bilinearly at base resolution (static shapes, exportable),
super-sampling and averaging when a crop is much larger than the base resolution so that
downscaling does not alias; the sampling is separable, so it runs as row gathers and small matmuls
(``_crops``), not ``grid_sample``, which onnxruntime runs slowly; the rows are gathered channel by
channel from the frames as they lie (a transposed copy of a batch of 256-px frames cost more than
the gathers). The first level's one view of a frame whose samples fall on pixel centres or halfway
between two (side = b * ss or 2 * b * ss: 64 px at base 16, 256 px at base 32) is an average pool,
exactly: one op where the two passes were a third of TNet's time on 64-px frames and most of it on
256-px fields (2.5x the images/s there, eager).

FLOPs (2 per multiply-accumulate): the crop sampling (2 per weighted tap, ``crop_flops``: a few
percent of the total, and the only part that grows with the image size), the backbone's convolutions
and projection on every view, the cell pooling matmuls and location module on every view that is
split (all but the last level's), the positional projection, attention pooling and the head. Norms,
pooling and top-k are not counted.

``used_map`` is the fraction of full-resolution pixels each image pixel was seen at: a view of side
s pixels sampled at base resolution b resolves min(1, (b / s)^2) of the pixels it covers, and each
pixel takes the best view covering it. The whole-image view therefore shows as a low floor
(b^2 / (H W)) and attended crops as brighter squares (1 where a crop is seen at native resolution).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_space.strategies.base import CountedKModel, ParamSpec, register_strategy
from search_space.strategies.blocks import (
    FOREGROUND_PRIOR_WEIGHT,
    ClassifierHead,
    area_resize_flops,
    border_background,
    conv2d_flops,
    distance_from_background,
    linear_flops,
    standardised,
    top_indices,
)
from search_space.strategies.dense_cnn import conv_stem, residual_stages, residual_stages_flops

_PE_FREQS = (1.0, 2.0, 4.0, 8.0)  # sine/cosine frequencies (in units of pi/2) per (y, x, level) coordinate
_PE_DIM = 3 * 2 * len(_PE_FREQS)
_MAX_SUPERSAMPLE = 4
LOCATION_PRIORS = ("none", "foreground")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(4, channels), channels)


def _cell_offsets(grid_size: int, overlap: float) -> torch.Tensor:
    """(G,) centres of the G cells along one side of a view (G >= 2), in units of the view's half-side."""
    return -1 + overlap + torch.arange(grid_size, dtype=torch.float32) * (2 * (1 - overlap) / (grid_size - 1))


def _cell_pooling(side: int, grid_size: int, overlap: float) -> torch.Tensor:
    """(G, side) weights averaging a map of ``side`` positions over each cell's interval of the view."""
    centres = _cell_offsets(grid_size, overlap)  # in [-1, 1]
    lo, hi = centres - overlap, centres + overlap  # (G,)
    edges = torch.linspace(-1.0, 1.0, side + 1)
    covered = (torch.minimum(hi[:, None], edges[None, 1:]) - torch.maximum(lo[:, None], edges[None, :-1])).clamp(min=0)
    return covered / covered.sum(dim=1, keepdim=True)


class _LevelBatchNorm(nn.Module):
    """BatchNorm with statistics and affine of its own per level: each level's views (a downscaled whole
    image, then crops at finer and finer scales) are normalised by their own batch statistics in
    training and by their own running averages in eval. ``level`` is set by the backbone before each pass."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(levels))
        self.level = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.level](x)


NORMS = ("group", "batch")
ENCODERS = ("residual", "plain")


def _plain_stages(width: int, stages: int, norm_layer: Callable[[int], nn.Module] = _group_norm) -> list[nn.Module]:
    """The compact encoder's stages: nothing at stage 0 (the stem is its first conv), then one
    3x3 conv -> norm -> ReLU per stage, stride 2, channels doubled (``width * 2**s`` out)."""
    out: list[nn.Module] = [nn.Identity()]
    for s in range(1, stages):
        c_in, c_out = width * 2 ** (s - 1), width * 2**s
        out.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), norm_layer(c_out), nn.ReLU()))
    return out


def encoder_stages_flops(base: int, *, encoder: str, width: int, stages: int) -> list[tuple[float, int, int]]:
    """(FLOPs, output side, output side) of each encoder stage on a ``base`` x ``base`` view."""
    if encoder == "residual":
        return residual_stages_flops(base, base, width=width, stages=stages, blocks_per_stage=1)
    out, side = [(0.0, base, base)], base
    for s in range(1, stages):
        side = (side - 1) // 2 + 1
        out.append((conv2d_flops(side, side, width * 2 ** (s - 1), width * 2**s, 3), side, side))
    return out


class _Backbone(nn.Module):
    """The encoder at base resolution (a stem, then ``stages`` stages, GroupNorm or BatchNorm per level): a pooled feature and a
    mid-network map. ``residual``: dense_cnn's basic blocks; ``plain``: one strided conv per stage."""

    def __init__(self, *, in_channels: int, width: int, stages: int, embed_dim: int, encoder: str = "residual",
                 norm: str = "group", levels: int = 1) -> None:
        super().__init__()
        norm_layer = _group_norm if norm == "group" else functools.partial(_LevelBatchNorm, levels=levels)
        self.stem = conv_stem(in_channels=in_channels, width=width, stride=1, norm_layer=norm_layer)
        if encoder == "residual":
            blocks = residual_stages(width=width, stages=stages, blocks_per_stage=1, norm_layer=norm_layer)
            self.stages = nn.ModuleList(nn.Sequential(*stage) for stage in blocks)
        else:
            self.stages = nn.ModuleList(_plain_stages(width, stages, norm_layer))
        self._level_norms = [m for m in self.modules() if isinstance(m, _LevelBatchNorm)]
        self.map_stage = stages - 2  # the map the location module reads; -1 = the stem's output
        self.map_channels = width * 2 ** max(self.map_stage, 0)
        self.proj = nn.Linear(width * 2 ** (stages - 1), embed_dim)

    def set_level(self, level: int) -> None:
        """Which level's norms the next pass uses (nothing to do under GroupNorm)."""
        for module in self._level_norms:
            module.level = level

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(views)  # (n, w, b, b)
        fmap = x
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s == self.map_stage:
                fmap = x  # (n, w * 2**s, b / 2**s, b / 2**s)
        return self.proj(x.mean(dim=(2, 3))), fmap  # (n, D), (n, C_map, s, s)


class _LocationModule(nn.Module):
    """Scores the G x G cells of each view from detached features; log pi per view (logits L2-normalised as in TNet)."""

    def __init__(self, *, map_channels: int, map_side: int, embed_dim: int, grid_size: int, overlap: float) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.register_buffer("pool", _cell_pooling(map_side, grid_size, overlap), persistent=False)  # (G, s)
        self.conv1 = nn.Conv2d(map_channels + embed_dim + 2, embed_dim, 1)
        self.act = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(embed_dim, 1, 1)
        axis = _cell_offsets(grid_size, overlap)
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("cell_coords", torch.stack([yy, xx])[None], persistent=False)  # (1, 2, G, G)

    def forward(self, fmap: torch.Tensor, feat: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """log pi (n, G*G) per view; ``prior`` (n, G*G), when given, is added to the normalised logits."""
        n, G = fmap.shape[0], self.grid_size
        cells = self.pool @ fmap.detach() @ self.pool.T  # (n, C_map, G, G): the map averaged over each cell
        x = torch.cat([cells, feat.detach()[:, :, None, None].expand(-1, -1, G, G), self.cell_coords.expand(n, -1, -1, -1)], 1)
        logits = F.normalize(self.conv2(self.act(self.conv1(x))).flatten(1), dim=1)  # (n, G*G)
        if prior is not None:
            logits = logits + FOREGROUND_PRIOR_WEIGHT * prior  # against normalised logits, each within [-1, 1]
        return logits.log_softmax(dim=1)


@register_strategy(
    "tnet_traversal",
    params={
        "base_resolution": ParamSpec("int", 8, 48, default=12, doc="side in pixels every view is resized to"),
        "grid_size": ParamSpec("int", 2, 5, default=5, doc="G: each view is scored as a G x G grid of cells"),
        "regions": ParamSpec("int", 1, 8, default=2, doc="k: cells attended inside each parent view (at most grid_size**2)"),
        "levels": ParamSpec("int", 2, 4, default=2, doc="scale levels, counting the whole-image view"),
        "overlap": ParamSpec("float", 0.2, 0.8, default=0.4, doc="side of a child view as a fraction of its parent's"),
        "width": ParamSpec("int", 4, 64, default=8, doc="backbone channels of the stem and first stage (doubled per stage)"),
        "stages": ParamSpec(
            "int", 1, 4, default=3, doc="backbone stages; each after the first halves H and W and doubles the channels"
        ),
        "encoder": ParamSpec(
            "choice", choices=ENCODERS, default="residual",
            doc="backbone: dense_cnn's residual blocks, or one strided conv per stage (cheaper per view)",
        ),
        "embed_dim": ParamSpec("int", 8, 256, default=32, doc="feature dimension of a view"),
        "norm": ParamSpec(
            "choice", choices=NORMS, default="group",
            doc="backbone norm: GroupNorm per view, or BatchNorm with statistics of its own per level",
        ),
        "location_prior": ParamSpec(
            "choice", choices=LOCATION_PRIORS, default="none",
            doc="an image-driven prior added to the location logits: none, or each cell's foreground (stain)",
        ),
        "pooling": ParamSpec("choice", choices=("mean", "attention"), default="mean", doc="how view features are combined"),
        "gumbel_explore": ParamSpec("bool", default=True, doc="sample cells by Gumbel top-k while training (else top-k)"),
        "glimpse_loss_weight": ParamSpec("float", 0.0, 2.0, default=0.5, doc="weight of the per-glimpse cross-entropy"),
        "reinforce_weight": ParamSpec("float", 0.0, 1.0, default=0.1, doc="weight of REINFORCE; 0 = location module frozen"),
        "glimpse_reward_share": ParamSpec(
            "float", 0.0, 1.0, default=0.7, doc="share of REINFORCE rewarding each glimpse by its own prediction"
        ),
    },
    uses_k_rule=True,
    doc="TNet: top-k glimpses per parent through dense_cnn's encoder; location module trained by per-glimpse REINFORCE.",
)
class TNetTraversal(CountedKModel):
    """Recursive top-k-per-parent glimpses through one shared backbone; see the module docstring."""

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
        stages: int,
        embed_dim: int,
        pooling: str,
        encoder: str,
        norm: str,
        location_prior: str,
        gumbel_explore: bool,
        glimpse_loss_weight: float,
        reinforce_weight: float,
        glimpse_reward_share: float,
        baseline_decay: float = 0.9,
    ) -> None:
        super().__init__()
        if levels < 2 or grid_size < 2:
            raise ValueError(f"levels={levels} and grid_size={grid_size} must both be >= 2 (at least one glimpse level)")
        if not 1 <= regions <= grid_size**2:
            raise ValueError(f"regions={regions} must lie in [1, grid_size**2={grid_size**2}]")
        if pooling not in ("mean", "attention"):
            raise ValueError(f"pooling={pooling!r} must be 'mean' or 'attention'")
        map_side = encoder_stages_flops(base_resolution, encoder=encoder, width=width, stages=stages)
        map_side = base_resolution if stages < 2 else map_side[stages - 2][1]
        if map_side < 2:
            raise ValueError(f"base_resolution={base_resolution} is too small for stages={stages}: the location map would be 1x1")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.base_resolution, self.grid_size, self.levels = base_resolution, grid_size, levels
        self.overlap, self.width, self.stages, self.embed_dim, self.pooling = overlap, width, stages, embed_dim, pooling
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} must be one of {NORMS}")
        if location_prior not in LOCATION_PRIORS:
            raise ValueError(f"location_prior={location_prior!r} must be one of {LOCATION_PRIORS}")
        self.encoder, self.location_prior = encoder, location_prior
        self.gumbel_explore = gumbel_explore
        self.glimpse_loss_weight, self.reinforce_weight = glimpse_loss_weight, reinforce_weight
        self.glimpse_reward_share, self.baseline_decay = glimpse_reward_share, baseline_decay
        self.map_side = map_side
        self._k = regions

        self.norm = norm
        self.backbone = _Backbone(in_channels=in_channels, width=width, stages=stages, embed_dim=embed_dim, encoder=encoder,
                                  norm=norm, levels=levels)
        self.locate = _LocationModule(
            map_channels=self.backbone.map_channels, map_side=map_side, embed_dim=embed_dim, grid_size=grid_size, overlap=overlap
        )
        self.pos = nn.Linear(_PE_DIM, embed_dim)
        self.pool_score = nn.Linear(embed_dim, 1) if pooling == "attention" else None
        self.head = ClassifierHead(dim=embed_dim, num_classes=num_classes)

        # Half-side of a view at each level, in [-1, 1] image coordinates (level 0: the whole image).
        self.half_sizes = [overlap**level for level in range(levels)]
        # Offset of each cell's centre from its view's centre, in units of the view's half-side: (G*G, 2) as (y, x).
        axis = _cell_offsets(grid_size, overlap)
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("cell_offsets", torch.stack([yy.flatten(), xx.flatten()], dim=1), persistent=False)
        # Averages a base-resolution view over each cell's interval: the foreground prior's pooling.
        self.register_buffer("view_pool", _cell_pooling(base_resolution, grid_size, overlap), persistent=False)
        # Moving average of the REINFORCE reward; starts at chance accuracy.
        self.register_buffer("reward_baseline", torch.tensor(1.0 / num_classes))
        self._cache: dict[str, torch.Tensor] | None = None

    # --- k ---------------------------------------------------------------------------------------
    def k_bounds(self) -> tuple[int, int]:
        """k counts the regions kept inside each parent view."""
        return 1, self.grid_size**2

    def n_views(self) -> int:
        """Backbone passes per image: the whole image, then k children of every view down to the last level."""
        return sum(self._k**level for level in range(self.levels))

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        content, position, _, glimpse_logp = self._traverse(images)  # (B, N, D) twice, centres per level, (B, N - 1)
        tokens = content + position
        if self.pool_score is None:
            pooled = tokens.mean(dim=1)  # (B, D)
        else:
            weights = self.pool_score(tokens).softmax(dim=1)  # (B, N, 1)
            pooled = (weights * tokens).sum(dim=1)
        logits = self.head(pooled)  # (B, classes)
        if self.training:
            glimpse_logits = self.head(content)  # (B, N, classes): what each glimpse shows, not where it is
            self._cache = {"glimpse_logp": glimpse_logp, "glimpse_logits": glimpse_logits}
        return logits

    def _traverse(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Run every level; return view tokens (B, N, D), view centres per level (B, k**level, 2), and
        each glimpse's log pi (B, N - 1), views ordered level by level and parent-major within a level."""
        B, k = images.shape[0], self._k
        background = None if self.location_prior == "none" else border_background(images)  # (B, C)
        centres = images.new_zeros(B, 1, 2)  # (B, n, 2) view centres (y, x) in [-1, 1]
        feat, fmap, views = self._look(images, centres, level=0)  # (B, n, D), (B*n, C_map, s, s), (B*n, C, b, b)
        content, position, all_centres, logps = [feat], [self._position(centres, 0)], [centres], []
        for level in range(1, self.levels):
            n = centres.shape[1]
            prior = None if background is None else self._foreground(views, background)
            log_pi = self.locate(fmap, feat.flatten(0, 1), prior)  # (B*n, G2): one distribution per parent view
            cell, logp = self._choose(log_pi)  # (B*n, k) each
            offsets = self.cell_offsets[cell] * self.half_sizes[level - 1]  # (B*n, k, 2)
            centres = (centres.reshape(B * n, 1, 2) + offsets).reshape(B, n * k, 2)
            feat, fmap, views = self._look(images, centres, level)
            content.append(feat)
            position.append(self._position(centres, level))
            all_centres.append(centres)
            logps.append(logp.reshape(B, n * k))
        return torch.cat(content, dim=1), torch.cat(position, dim=1), all_centres, torch.cat(logps, dim=1)

    def _choose(self, log_pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k cells of each view (Gumbel-perturbed in training when exploring) and each pick's log-probability."""
        k = self._k
        if self.training and self.gumbel_explore:
            gumbel = -torch.log(-torch.log(torch.rand_like(log_pi).clamp(1e-10, 1.0 - 1e-7)))
            idx = (log_pi.detach() + gumbel).topk(k, dim=1).indices  # (n, k), in draw order
            chosen = log_pi.gather(1, idx)
            taken = chosen.exp().cumsum(dim=1) - chosen.exp()  # mass drawn before each pick
            return idx, chosen - torch.log1p(-taken.clamp(max=1.0 - 1e-6))  # Plackett-Luce, per pick
        idx = top_indices(log_pi, k)
        return idx, log_pi.gather(1, idx)  # as released: each chosen cell's log pi

    def _supersample(self, level: int, H: int, W: int) -> int:
        """Samples per output pixel side at ``level``: a crop much larger than the base resolution is
        super-sampled and averaged, so that downscaling does not alias."""
        return max(1, min(_MAX_SUPERSAMPLE, round(self.half_sizes[level] * max(H, W) / self.base_resolution)))

    def _taps(self, centre: torch.Tensor, half: float, ss: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Along one axis, the source pixels and weights of each output pixel of views centred at
        ``centre`` (B, n): (B, n, b, 2 * ss) each. Output pixel i averages ss samples at the pixel
        centres of a side b * ss grid over [centre - half, centre + half], each bilinear between two
        pixels with border clamping: ``grid_sample(align_corners=False, padding_mode="border")``
        then ``avg_pool2d(ss)``, term by term."""
        b = self.base_resolution
        side = b * ss
        axis = (2 * torch.arange(side, device=centre.device, dtype=centre.dtype) + 1) / side - 1  # (side,)
        at = axis * half + centre[..., None]  # (B, n, side) in [-1, 1] image coordinates
        pix = (((at + 1) * size - 1) / 2).clamp(0, size - 1)  # pixel coordinates, clamped at the border
        low = pix.floor()
        frac = pix - low
        low = low.long()
        high = (low + 1).clamp(max=size - 1)
        index = torch.stack([low, high], dim=-1).reshape(*centre.shape, b, 2 * ss)
        weight = (torch.stack([1 - frac, frac], dim=-1) / ss).reshape(*centre.shape, b, 2 * ss)
        return index, weight

    def _crops(self, images: torch.Tensor, centres: torch.Tensor, level: int) -> torch.Tensor:
        """(B, C, H, W) images, (B, n, 2) view centres -> (B * n, C, b, b) crops at base resolution.

        Bilinear sampling is separable on an axis-aligned grid, so it runs as two passes of row
        gathers (index_select on flattened rows) and one small matmul per output row that weights its
        taps: a few large ops that torch and onnxruntime run at speed (onnxruntime's GridSample ran
        at a twentieth of a convolution's rate), computing what ``grid_sample`` + ``avg_pool2d`` did.
        """
        B, C, H, W = images.shape
        n, b, half = centres.shape[1], self.base_resolution, self.half_sizes[level]
        ss = self._supersample(level, H, W)
        if self._pools_whole_frame(level, H, W):
            return F.avg_pool2d(images, H // b)  # (B, C, b, b), n = 1
        taps = 2 * ss
        row_index, row_weight = self._taps(centres[..., 0], half, ss, H)  # (B, n, b, taps)
        col_index, col_weight = self._taps(centres[..., 1], half, ss, W)
        # rows: each output row of every view is a weighted sum of image rows, (C * W) values each, picked
        # channel by channel from the images as they lie (a transposed copy of a large frame cost more
        # than the gathers)
        channels = torch.arange(C, device=images.device) * H
        rows = (row_index + (torch.arange(B, device=images.device) * C * H)[:, None, None, None])[..., None] + channels
        picked = images.reshape(B * C * H, W).index_select(0, rows.reshape(-1)).reshape(B * n * b, taps, C * W)
        out = torch.bmm(row_weight.reshape(B * n * b, 1, taps), picked)  # (B * n * b, 1, C * W)
        # columns: the same along x, on the (b rows x C) values of each view column
        src = out.reshape(B * n, b, C, W).permute(0, 3, 1, 2).reshape(B * n * W, b * C)
        cols = col_index.reshape(B * n, b, taps) + (torch.arange(B * n, device=images.device) * W)[:, None, None]
        picked = src.index_select(0, cols.reshape(-1)).reshape(B * n * b, taps, b * C)
        out = torch.bmm(col_weight.reshape(B * n * b, 1, taps), picked)  # (B * n * b_x, 1, b_y * C)
        return out.reshape(B * n, b, b, C).permute(0, 3, 2, 1)  # (B * n, C, b_y, b_x)

    def _look(self, images: torch.Tensor, centres: torch.Tensor, level: int) -> tuple[torch.Tensor, ...]:
        """Crop every view (B, n, 2 centres) at this level's size, resize to base, run the backbone:
        the views' features (B, n, D), mid-network maps and the views themselves (B*n, C, b, b)."""
        views = self._crops(images, centres, level)
        self.backbone.set_level(level)
        feat, fmap = self.backbone(views)
        return feat.reshape(images.shape[0], centres.shape[1], -1), fmap, views

    def _foreground(self, views: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """(B*n, G*G) the foreground prior: each cell's mean |pixel - background| over its view (the
        image's border median, as span_pyramid's ``foreground`` score), standardised per view."""
        bg = background.repeat_interleave(views.shape[0] // background.shape[0], dim=0)  # (B*n, C)
        away = distance_from_background(views, bg)  # (B*n, b, b)
        cells = (self.view_pool @ away @ self.view_pool.T).flatten(1)  # (B*n, G*G)
        return standardised(cells)

    def prior_flops(self) -> float:
        """FLOPs of the foreground prior on one split view (0 without it): its two pooling matmuls (the
        distance to the background is elementwise, uncounted like the norms)."""
        if self.location_prior == "none":
            return 0.0
        b, G = self.base_resolution, self.grid_size
        return 2.0 * G * b * b + 2.0 * G * b * G

    def _pools_whole_frame(self, level: int, H: int, W: int) -> bool:
        """Whether ``level``'s one view is the whole frame, sampled so that it is an ``avg_pool2d(H / b)``:
        level 0 with H = W = m * b * ss, m 1 or 2. At m = 1 every sample falls on a pixel centre; at
        m = 2 between two pixels, weighted a half each; either way the ss x ss samples of an output
        pixel average exactly its H / b-square block. One op in place of two gather passes: a third
        of TNet's time on 64-px frames in onnxruntime, more on large frames."""
        side = self.base_resolution * self._supersample(level, H, W)
        return level == 0 and H == W and H % side == 0 and H // side in (1, 2)

    def crop_flops(self, H: int, W: int) -> float:
        """FLOPs of sampling every view of one H x W image: per view and level, 2 per tap of each row
        pass output (b * C * W of them) and column pass output (b * b * C), 2 * ss taps each; a
        whole frame pooled (``_pools_whole_frame``) 1 per input element."""
        b, C = self.base_resolution, self.in_channels
        return sum(
            area_resize_flops(C, H, W, b, b) if self._pools_whole_frame(level, H, W)
            else self._k**level * 2.0 * 2 * self._supersample(level, H, W) * b * C * (W + b)
            for level in range(self.levels)
        )

    def _position(self, centres: torch.Tensor, level: int) -> torch.Tensor:
        """(B, n, 2) centres at ``level`` -> (B, n, D) positional embedding of (y, x, level)."""
        lvl = centres.new_full(centres.shape[:-1] + (1,), level / max(self.levels - 1, 1))
        coords = torch.cat([centres, lvl], dim=-1)  # (B, n, 3)
        freqs = coords.new_tensor(_PE_FREQS) * (math.pi / 2)
        angles = (coords[..., None] * freqs).flatten(-2)  # (B, n, 3 * F)
        return self.pos(torch.cat([angles.sin(), angles.cos()], dim=-1))

    # --- training signal -------------------------------------------------------------------------
    def auxiliary_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-glimpse cross-entropy, plus image-level and per-glimpse REINFORCE for the location module."""
        cache, self._cache = self._cache, None
        if cache is None:
            return logits.new_zeros(())
        glimpse_logits, glimpse_logp = cache["glimpse_logits"], cache["glimpse_logp"]  # (B, N, classes), (B, N-1)
        n = glimpse_logits.shape[1]
        glimpse_ce = F.cross_entropy(glimpse_logits.flatten(0, 1), targets.repeat_interleave(n))
        with torch.no_grad():
            reward = (logits.argmax(dim=1) == targets).to(logits.dtype)  # (B,)
            glimpse_reward = (glimpse_logits[:, 1:].argmax(dim=2) == targets[:, None]).to(logits.dtype)  # (B, N-1)
        share, baseline = self.glimpse_reward_share, self.reward_baseline
        image_term = -((reward - baseline) * glimpse_logp.sum(dim=1)).mean()
        glimpse_term = -((glimpse_reward - baseline) * glimpse_logp).mean()
        reinforce = (1 - share) * image_term + share * glimpse_term
        with torch.no_grad():
            mixed = (1 - share) * reward.mean() + share * glimpse_reward.mean()
            self.reward_baseline.mul_(self.baseline_decay).add_((1 - self.baseline_decay) * mixed)
        return self.glimpse_loss_weight * glimpse_ce + self.reinforce_weight * reinforce

    # --- reporting -------------------------------------------------------------------------------
    @torch.no_grad()
    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) fraction of full-resolution pixels resolved at each pixel by its best view."""
        B, _, H, W = images.shape
        was_training = self.training
        self.eval()  # the map shows the deterministic eval selection
        try:
            all_centres = self._traverse(images)[2]
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
        """Per-image inference FLOPs; the same for every image (the crop sampling depends on its size)."""
        b, w, D, G, s = self.base_resolution, self.width, self.embed_dim, self.grid_size, self.map_side
        stages = encoder_stages_flops(b, encoder=self.encoder, width=w, stages=self.stages)
        c_last = w * 2 ** (self.stages - 1)
        backbone = conv2d_flops(b, b, self.in_channels, w, 3) + sum(f for f, _, _ in stages) + linear_flops(1, c_last, D)
        c_map = self.backbone.map_channels
        cell_pooling = 2.0 * c_map * s * s * G + 2.0 * c_map * G * s * G  # map @ pool.T, then pool @ that
        location = cell_pooling + conv2d_flops(G, G, c_map + D + 2, D, 1) + conv2d_flops(G, G, D, 1, 1)
        views = self.n_views()
        split_views = views - self._k ** (self.levels - 1)  # every view but the last level's
        per_view = backbone + linear_flops(1, _PE_DIM, D) + (linear_flops(1, D, 1) if self.pool_score else 0.0)
        crops = self.crop_flops(*images.shape[2:])
        location += self.prior_flops()
        return crops + views * per_view + split_views * location + linear_flops(1, D, self.num_classes)
