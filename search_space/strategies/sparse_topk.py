"""``sparse_topk``: SparseAttnNet (arXiv 2505.07661), top-k pixels as tokens for a small transformer.

A coarse CNN scores every pixel (sigmoid map); the k best pixels are embedded with their (x, y)
position "like words", a CLS token is added, and transformer blocks classify from it. What a token
carries is searched (``token_content``): the pixel's values alone (the paper), its 3x3
neighbourhood, or the coarse CNN's features at the pixel plus its values. A lone pixel carries no
texture, so on cell images the transformer had to learn everything from the positions and colours
of scattered points; the two context modes give each token its surroundings for no attention cost
(the coarse features are already computed; the neighbourhood is a gather).

The coarse map cannot learn from the hard top-k, so it is distilled from the fine attention of the
downstream layers: the CLS-to-token attention averaged over every block and head (stop-gradient,
over the kept pixels) is its target, and randomly sampled unselected pixels are pushed toward 0
("negatives") so the map learns there too. Averaging the blocks rather than taking the last one is
what the paper describes and a steadier saliency target (methods.md §2.8.2). Optional: random
exploration slots while training, and straight-through gating so the classification loss also
reaches the selector. The default distillation is BCE toward the attention normalised by its
maximum: it gives absolute targets, so selected pixels the fine attention ignores fall out of the
top-k and others get their turn. KL over the kept pixels is shift-invariant, so only the negatives
move kept against unkept pixels, and on synthetic blob images it often locked onto its first
(background) choice.

``score_prior: foreground`` ranks pixels by the coarse logits plus ``FOREGROUND_PRIOR_WEIGHT`` times
each pixel's mean |value - background| (the image border's per-channel median), standardised per
image: the stain a smear's white cell carries. The distillation still trains the logits alone. On
256-px synthetic fields, where the target is 1.2% of the frame, the distilled map alone never found
it (0.0x random's share of the kept pixels on the target, 3 seeds; docs/benchmarks.md, "The goal on
fields"), and the model stayed at chance (19.7%, 5 classes).

Where it pays: a small stained target in a large frame, with k near the paper's share of the cell.
On those fields (a 32-px cell, 1.2% of a 256-px frame) k = 201 pixels (a quarter of the cell), a
stride-4 coarse map, width 32 and the score prior reach 65.4% test at 24.9 MFLOPs (19% of the native
dense CNN's), 17 points above the dense CNN at the same FLOPs and 11 below it at native size, with
80x random's share of its pixels on the cell. On the regime map it wins only where the target is
about 1% of the frame; where the cell fills much of it, a dense CNN on a smaller copy is better.

k is set by a k-adaptation rule. Rules that change k during training (fixed, loss_trend, schedule)
call ``set_k``. Per-image rules (``top_p``, ``ratio``) keep the static top-``k`` candidates and
mask out, per image, the ones past that image's count, so shapes stay static (export-friendly);
the masked slots still run, so ``analytic_flops`` counts every image at the cap, as executed. ``top_p`` counts on the
coarse logits softmax-normalised over the image's pixels, so "p of the score mass" is a share of a
distribution that sums to 1 per image; on the sigmoid map (mean about 0.5 everywhere) the mass was
spread so flat that every image hit the cap, a fixed k in disguise.

Cost: coarse CNN ∝ H·W / stride², each block ∝ n·D² (projections, MLP) + n²·D (attention pairs),
n = k + 1. The attention pairs stay a minority while n < 4·D (at mlp_ratio 2): at D = 64, up to
6% of a 64-px frame. The default initial k, 10% of the pixels, is generous on purpose: the default
k rule (``loss_trend``) takes it down to what the loss allows (on the synthetic cells at 32 px,
seeds 0-2: to 4-5% of the pixels, 53% fewer FLOPs at 2.5 points lower validation accuracy than a
fixed 10%, of which a fixed 5% from the start costs 1.3; on 64-px cells from 4% of the frame,
seeds 0-4: 54% fewer FLOPs at 0.5 points, where the same small k fixed from the start costs 4.7;
docs/benchmarks.md, "Adaptive k against fixed k"). The default coarse map runs at full
resolution: at stride 2 the bilinear map made training unstable on the synthetic cells (validation
accuracy fell to chance in epochs 2-3 before recovering, and with a shrinking k never recovered),
and the full-resolution map costs under 16% of the total at 32 px, 11% at 64 px.

Speed: at inference the blocks' attention runs as one fused kernel (exported as the graph
onnxruntime fuses into one matmul), the coarse CNN on channels-last tensors, and on frames of 32 x 32
and more the top-k finds the k-th score before it sorts only the kept. At batch 256 on 2 threads that
makes 0.38-0.42x dense_cnn's GFLOP/s in torch and 0.25-0.27x in onnxruntime (two runs, dense_cnn
timed warm; from 0.31x and 0.23x; docs/benchmarks.md, "Achieved GFLOP/s"); what remains is the attention's
16-wide heads (D = 64, 4 heads), whose pairs run at a third of a convolution's rate, and the
8-channel coarse map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from search_space.k_rules import k_rule_class
from search_space.strategies.base import CountedKModel, ParamSpec, eval_mode, register_strategy, transformer_params
from search_space.strategies.blocks import (
    FOREGROUND_PRIOR_WEIGHT,
    ClassifierHead,
    TransformerBlock,
    bilinear_flops,
    block_flops,
    border_background,
    channels_last,
    conv2d_flops,
    distance_from_background,
    linear_flops,
    standardised,
    top_indices,
)

RATIO_LOSS_WEIGHT = 2.0  # DynamicViT's weight on the keep-ratio loss
TOKEN_CONTENTS = ("pixel", "patch3", "coarse_features")
MIN_TOKENS = 4  # the fewest pixels a model keeps, whatever the frame
SCORE_PRIORS = ("none", "foreground")


class CoarseSelector(nn.Module):
    """Small CNN -> per-pixel logits (B, H*W) and its last hidden features (B, channels, h, w); with
    ``stride`` > 1 it runs at reduced resolution and the logits are upsampled bilinearly."""

    def __init__(self, *, in_channels: int, channels: int, layers: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.channels, self.layers, self.stride = in_channels, channels, layers, stride
        convs: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1), nn.ReLU()]
        for _ in range(layers - 1):
            convs += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        convs.append(nn.Conv2d(channels, 1, 1))
        self.net = nn.Sequential(*convs)  # one Sequential: the weights' names are those saved runs hold

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = images.shape[2:]
        features = self.net[:-1](channels_last(images))  # (B, channels, h, w)
        z = self.net[-1](features)  # (B, 1, h, w)
        if self.stride > 1:
            z = F.interpolate(z, size=(H, W), mode="bilinear", align_corners=False)
        return z.flatten(1), features  # (B, H*W), (B, channels, h, w)

    def flops(self, H: int, W: int) -> float:
        """The convolutions, plus the bilinear upsampling of the logits when ``stride`` > 1."""
        h, w = (H - 1) // self.stride + 1, (W - 1) // self.stride + 1
        flops = conv2d_flops(h, w, self.in_channels, self.channels, 3)
        flops += (self.layers - 1) * conv2d_flops(h, w, self.channels, self.channels, 3)
        flops += conv2d_flops(h, w, self.channels, 1, 1)
        return flops + (bilinear_flops(H * W) if self.stride > 1 else 0.0)


class MlpXYV(nn.Module):
    """Shared two-layer MLP on [x, y, content] -> D (the paper's joint sparse point embedding)."""

    def __init__(self, *, content_dim: int, dim: int) -> None:
        super().__init__()
        self.d_in, self.dim = content_dim + 2, dim
        self.fc1 = nn.Linear(self.d_in, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, xy: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(torch.cat([xy, values], dim=-1))))  # (B, K, D)

    def flops(self, n: float) -> float:
        return linear_flops(n, self.d_in, self.dim) + linear_flops(n, self.dim, self.dim)


class FourierXYV(nn.Module):
    """Sine-cosine features of (x, y) at geometric frequencies up to the pixel Nyquist rate, with the
    token content, through one linear layer -> D."""

    def __init__(self, *, content_dim: int, dim: int, image_size: int, bands: int = 8) -> None:
        super().__init__()
        freqs = math.pi * torch.logspace(0.0, math.log10(max(image_size / 2, 1.0)), bands)  # (bands,)
        self.register_buffer("freqs", freqs, persistent=False)
        self.d_in, self.dim = content_dim + 4 * bands, dim
        self.fc = nn.Linear(self.d_in, dim)

    def forward(self, xy: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        angles = (xy[..., None] * self.freqs).flatten(-2)  # (B, K, 2 * bands)
        return self.fc(torch.cat([angles.sin(), angles.cos(), values], dim=-1))  # (B, K, D)

    def flops(self, n: float) -> float:
        return linear_flops(n, self.d_in, self.dim)


@register_strategy(
    "sparse_topk",
    params={
        "coarse_channels": ParamSpec("int", low=2, high=64, default=8, doc="channels of the coarse scoring CNN"),
        "coarse_layers": ParamSpec("int", low=1, high=4, default=2, doc="3x3 conv layers of the coarse CNN"),
        "coarse_stride": ParamSpec(
            "choice", choices=(1, 2, 4), default=1, doc="coarse CNN resolution divisor (logits upsampled)"
        ),
        "k_fraction": ParamSpec("float", low=0.0, high=1.0, low_open=True, default=0.1, doc="initial k as a fraction of H*W"),
        "token_content": ParamSpec(
            "choice",
            choices=TOKEN_CONTENTS,
            default="patch3",
            doc="what a token carries besides (x, y): pixel values, 3x3 patch, or coarse CNN features + values",
        ),
        "pixel_embedding": ParamSpec(
            "choice", choices=("mlp_xyv", "fourier"), default="mlp_xyv", doc="how (x, y, content) become a token"
        ),
        **transformer_params(embed_dim=64, num_heads=4, depth=2, mlp_ratio=2.0),
        "distill_loss": ParamSpec("choice", choices=("kl", "bce"), default="bce", doc="form of the coarse-map distillation loss"),
        "distill_weight": ParamSpec("float", low=0.0, high=10.0, default=1.0, doc="weight of distillation + negatives"),
        "negatives": ParamSpec("int", low=0, high=4096, default=8, doc="unselected pixels per image pushed toward score 0"),
        "explore_fraction": ParamSpec(
            "float", low=0.0, high=0.5, default=0.05, doc="training-only share of k given to random pixels"
        ),
        "st_gating": ParamSpec("bool", default=True, doc="straight-through gate so the class loss reaches the selector"),
        "score_prior": ParamSpec(
            "choice", choices=SCORE_PRIORS, default="none",
            doc="an image-driven prior added to the coarse logits when ranking: none, or each pixel's foreground (stain)",
        ),
    },
    doc="SparseAttnNet: coarse CNN picks top-k pixels, a transformer classifies them as tokens.",
)
class SparseTopK(CountedKModel):
    """Coarse CNN -> top-k pixels -> pixel tokens + CLS -> transformer blocks -> head on CLS."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        coarse_channels: int,
        coarse_layers: int,
        coarse_stride: int,
        k_fraction: float,
        token_content: str,
        pixel_embedding: str,
        embed_dim: int,
        num_heads: int,
        depth: int,
        mlp_ratio: float,
        distill_loss: str,
        distill_weight: float,
        negatives: int,
        explore_fraction: float,
        st_gating: bool,
        score_prior: str = "none",
        k_rule: str = "fixed",
        k_rule_config: dict | None = None,
    ) -> None:
        super().__init__()
        if distill_loss not in ("kl", "bce"):
            raise ValueError(f"distill_loss must be 'kl' or 'bce', got {distill_loss!r}")
        self.num_classes, self.embed_dim, self.depth, self.mlp_ratio = num_classes, embed_dim, depth, mlp_ratio
        self.num_pixels = image_size * image_size
        self.distill_loss, self.distill_weight = distill_loss, distill_weight
        self.negatives, self.explore_fraction, self.st_gating = negatives, explore_fraction, st_gating
        if score_prior not in SCORE_PRIORS:
            raise ValueError(f"score_prior={score_prior!r} must be one of {SCORE_PRIORS}")
        self.score_prior = score_prior
        self.k_rule, self.k_rule_config = k_rule, dict(k_rule_config or {})
        self.rule = k_rule_class(k_rule)  # what the rule does, asked of the rule, not of its name
        self.k_settings = self.rule.settings(self.k_rule_config)  # checked once, read every step
        self.per_image = self.rule.per_image
        if token_content not in TOKEN_CONTENTS:
            raise ValueError(f"token_content must be one of {TOKEN_CONTENTS}, got {token_content!r}")
        self.token_content = token_content

        self.selector = CoarseSelector(
            in_channels=in_channels, channels=coarse_channels, layers=coarse_layers, stride=coarse_stride
        )
        content_dim = {"pixel": in_channels, "patch3": 9 * in_channels, "coarse_features": in_channels + coarse_channels}
        if pixel_embedding == "mlp_xyv":
            self.embed: MlpXYV | FourierXYV = MlpXYV(content_dim=content_dim[token_content], dim=embed_dim)
        elif pixel_embedding == "fourier":
            self.embed = FourierXYV(content_dim=content_dim[token_content], dim=embed_dim, image_size=image_size)
        else:
            raise ValueError(f"pixel_embedding must be 'mlp_xyv' or 'fourier', got {pixel_embedding!r}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.head = ClassifierHead(dim=embed_dim, num_classes=num_classes)

        low, high = self.k_bounds()
        self._k = min(max(round(k_fraction * self.num_pixels), low), high)
        self._last_counts: torch.Tensor | None = None  # (B,) kept per image, last non-export forward
        self._cache: dict[str, torch.Tensor] = {}  # what the last training forward leaves for auxiliary_loss

    # ----- k ---------------------------------------------------------------------------------------
    def k_bounds(self) -> tuple[int, int]:
        # An absolute floor, not a share of the frame: on a large field the target is ~1% of the frame,
        # and the paper's share of it (about 15% of the cell's pixels) is a tenth of a percent.
        return MIN_TOKENS, self.num_pixels


    # ----- selection -------------------------------------------------------------------------------
    def _select(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pick K = min(k, H*W) pixels per image: the coarse logits ``z`` (B, H*W), the coarse
        ``features`` (B, channels, h, w), the indices ``idx`` (B, K) and, for per-image rules,
        ``counts`` (B,) and a ``valid`` mask (B, K). Training puts random unselected pixels in the
        last ``explore_fraction`` of the slots."""
        B, _, H, W = images.shape
        z, features = self.selector(images)  # (B, H*W) coarse logits, (B, channels, h, w)
        K = min(self._k, H * W)
        idx = top_indices(self._ranking(images, z), K)  # (B, K), sorted high to low
        out = {"z": z, "features": features, "idx": idx}
        if self.per_image:  # each image keeps a prefix of its K ranked candidates
            scores = self.rule.keep_scores(z)  # (B, H*W): a distribution (top_p), keep probabilities (ratio)
            counts = self.rule.counts(scores, self.k_settings, k_max=K, k_min=min(self.k_bounds()[0], K))  # (B,)
            out["counts"] = counts
            out["valid"] = torch.arange(K, device=z.device)[None, :] < counts[:, None]  # (B, K)
        n_explore = min(int(self.explore_fraction * K), H * W - K) if self.training else 0
        if n_explore > 0:
            noise = torch.rand_like(z).scatter(1, idx, -1.0)  # selected pixels can never win
            idx = torch.cat([idx[:, : K - n_explore], noise.topk(n_explore, dim=1).indices], dim=1)
            out["idx"] = idx
            if self.per_image:  # exploration slots always take part
                out["valid"] = out["valid"] | (torch.arange(K, device=z.device) >= K - n_explore)[None, :]
        return out

    def _ranking(self, images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B, H*W) what the top-k ranks: the coarse logits, plus under ``score_prior: foreground`` each
        pixel's mean |value - background| standardised per image (the distillation still trains z alone)."""
        if self.score_prior == "none":
            return z
        away = distance_from_background(images, border_background(images)).flatten(1)  # (B, H*W)
        return z + FOREGROUND_PRIOR_WEIGHT * standardised(away)

    def _content(self, images: torch.Tensor, features: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """What each kept pixel's token carries, by ``token_content``: (B, K) rows and columns -> (B, K, content_dim).

        Everything is a gather at fixed shapes (no unfold, no data-dependent loops), so it exports.
        """
        B, C, H, W = images.shape
        K = ys.shape[1]
        if self.token_content == "patch3":  # the 3x3 neighbourhood, zero outside the image
            padded = F.pad(images, (1, 1, 1, 1)).flatten(2)  # (B, C, (H+2)*(W+2))
            offsets = torch.arange(-1, 2, device=ys.device)
            rows = (ys[:, :, None, None] + 1 + offsets[:, None]) * (W + 2)  # (B, K, 3, 1)
            flat = (rows + xs[:, :, None, None] + 1 + offsets[None, :]).flatten(1)  # (B, K*9)
            patch = padded.gather(2, flat[:, None, :].expand(B, C, -1))  # (B, C, K*9)
            return patch.reshape(B, C, K, 9).permute(0, 2, 1, 3).flatten(2)  # (B, K, C*9)
        flat = (ys * W + xs)[:, None, :]  # (B, 1, K)
        values = images.flatten(2).gather(2, flat.expand(B, C, -1)).transpose(1, 2)  # (B, K, C)
        if self.token_content == "pixel":
            return values
        # coarse_features: the coarse CNN's hidden features at the cell nearest the pixel, stop-gradient:
        # letting the class loss reshape the selector's trunk made the selection churn (val accuracy
        # fell from 0.50 to 0.26 mid-training at the defaults) while distillation alone trains it
        features = features.detach()
        stride, (h, w) = self.selector.stride, features.shape[2:]
        fy = torch.div(ys + stride // 2, stride, rounding_mode="floor").clamp(max=h - 1)
        fx = torch.div(xs + stride // 2, stride, rounding_mode="floor").clamp(max=w - 1)
        cells = (fy * w + fx)[:, None, :]  # (B, 1, K)
        feats = features.flatten(2).gather(2, cells.expand(B, features.shape[1], -1)).transpose(1, 2)  # (B, K, channels)
        return torch.cat([values, feats], dim=-1)  # (B, K, C + channels)

    def _tokens(self, images: torch.Tensor, features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(B, K) flat pixel indices -> (B, K, D) embedded pixel tokens."""
        H, W = images.shape[2:]
        ys = torch.div(idx, W, rounding_mode="floor")
        xs = idx - ys * W
        xy = torch.stack([xs / max(W - 1, 1), ys / max(H - 1, 1)], dim=-1) * 2 - 1  # (B, K, 2) in [-1, 1]
        return self.embed(xy.to(images.dtype), self._content(images, features, ys, xs))

    # ----- forward ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        sel = self._select(images)
        idx, valid = sel["idx"], sel.get("valid")
        tokens = self._tokens(images, sel["features"], idx)  # (B, K, D)
        if self.training and self.st_gating:  # value 1, gradient of the selector's scores
            s = sel["z"].gather(1, idx).sigmoid()
            tokens = tokens * (1 + s - s.detach())[..., None]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)  # (B, K + 1, D)
        key_mask = None
        if valid is not None:
            key_mask = torch.cat([valid.new_ones(B, 1), valid], dim=1)  # (B, K + 1), CLS always real
        for block in self.blocks:
            x = block(x, key_mask=key_mask, keep_attn=self.training)
        logits = self.head(x[:, 0])  # (B, num_classes)

        if not torch.compiler.is_exporting():
            K = idx.shape[1]
            self._last_counts = sel["counts"].detach() if self.per_image else idx.new_full((B,), K)
            self._cache = {}
            if self.training:
                # the fine attention of the downstream layers: CLS-to-token, mean over blocks and heads
                cls_attn = torch.stack([block.attn.last_attn[:, :, 0, 1:] for block in self.blocks]).mean(dim=(0, 2))  # (B, K)
                self._cache = {"z": sel["z"], "idx": idx, "cls_attn": cls_attn}
                if valid is not None:
                    self._cache["valid"] = valid
        return logits

    # ----- auxiliary losses ------------------------------------------------------------------------
    def auxiliary_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Coarse-map distillation from the fine CLS attention of every block + negatives (+ ratio loss for ``ratio``)."""
        if not self._cache:
            return logits.new_zeros(())
        z, idx, cls_attn = self._cache["z"], self._cache["idx"], self._cache["cls_attn"]
        valid = self._cache.get("valid", torch.ones_like(idx, dtype=torch.bool))
        target = cls_attn.detach() * valid  # (B, K) stop-gradient fine attention over kept pixels
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-12)
        z_sel = z.gather(1, idx)  # (B, K) student logits at the same pixels
        if self.distill_loss == "kl":
            log_q = z_sel.masked_fill(~valid, -1e4).log_softmax(dim=1)
            distill = (torch.xlogy(target, target) - target * log_q).sum(dim=1).mean()
        else:
            soft = target / target.amax(dim=1, keepdim=True).clamp_min(1e-12)
            bce = F.binary_cross_entropy_with_logits(z_sel, soft, reduction="none")
            distill = (bce * valid).sum() / valid.sum().clamp_min(1)
        loss = distill
        n_neg = min(self.negatives, z.shape[1] - idx.shape[1])
        if n_neg > 0:  # kept and negative pixels weigh by their share of the supervised pixels
            noise = torch.rand_like(z).scatter(1, idx, -1.0)  # (B, H*W), selected pixels excluded
            neg = noise.topk(n_neg, dim=1).indices
            share = n_neg / (n_neg + idx.shape[1])
            loss = (1 - share) * distill + share * F.softplus(z.gather(1, neg)).mean()  # BCE toward 0
        if self.per_image and self.rule.reads_distribution:
            # top_p reads softmax(z) over the image as where the fine attention goes: cross-entropy of
            # that distribution against the attention (0 off the kept pixels), so p of its mass is p
            # of the predicted attention. BCE alone leaves the softmax spread over the whole cell,
            # and 80% of it needed more pixels than the cap in every image (a fixed k in disguise).
            loss = loss - (target * z.log_softmax(dim=1).gather(1, idx)).sum(dim=1).mean()
        loss = self.distill_weight * loss
        keep = self.rule.keep_loss(z, self.k_settings) if self.per_image else None
        if keep is not None:
            loss = loss + RATIO_LOSS_WEIGHT * keep
        return loss

    # ----- reports and cost ------------------------------------------------------------------------
    def _eval_selection(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with eval_mode(self):
            return self._select(images)

    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        """1 at the pixels each image attends (eval selection), else 0."""
        B, _, H, W = images.shape
        sel = self._eval_selection(images)
        weight = sel["valid"].to(images.dtype) if "valid" in sel else images.new_ones(sel["idx"].shape)
        return images.new_zeros(B, H * W).scatter(1, sel["idx"], weight).reshape(B, H, W)

    def flops_breakdown(self, images: torch.Tensor) -> dict[str, float]:
        """Per-image FLOPs by part: the coarse CNN over every pixel (and its bilinear upsampling at
        stride > 1); the token embedding, the blocks' projections and MLPs, and their attention
        pairs (QK^T and AV) over the K = min(k, H*W) token slots + CLS that run, per-image rules
        included (their masked slots run too); the head. Top-k, gathers, norms and activations are
        excluded."""
        H, W = images.shape[2:]
        n = float(min(self._k, H * W))  # token slots every image runs
        blocks = self.depth * block_flops(n + 1, self.embed_dim, self.mlp_ratio)
        pairs = self.depth * 2.0 * 2.0 * (n + 1) ** 2 * self.embed_dim  # inside ``blocks``: QK^T and attn @ V
        return {
            "coarse": self.selector.flops(H, W),
            "embed": self.embed.flops(n),
            "blocks_dense": blocks - pairs,
            "attention_pairs": pairs,
            "head": linear_flops(1, self.embed_dim, self.num_classes),
        }

    def analytic_flops(self, images: torch.Tensor) -> float:
        """Mean per-image FLOPs: the sum of :meth:`flops_breakdown`."""
        return sum(self.flops_breakdown(images).values())
