"""``dense_vit``: a patch ViT over the whole image, the dense transformer baseline.

Images are zero-padded on the right/bottom to a multiple of ``patch_size`` so any size works; the
position embedding (learned for the built ``image_size``, or 2-D sine-cosine) is resized to the
actual patch grid. Every patch is used, so ``used_map`` is all ones and there is no k.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from search_space.strategies.base import CellClassifier, ParamSpec, register_strategy, transformer_params
from search_space.strategies.blocks import ClassifierHead, TransformerBlock, block_flops, conv2d_flops, linear_flops


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """(grid_h * grid_w, dim) fixed 2-D sine-cosine position embedding (MAE style), row-major."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))  # (dim/4,)
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32), indexing="ij"
    )
    out_y = ys.reshape(-1, 1) * omega  # (N, dim/4)
    out_x = xs.reshape(-1, 1) * omega
    emb = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)  # (N, 4 * (dim/4))
    return F.pad(emb, (0, dim - emb.shape[1]))  # (N, dim)


@register_strategy(
    "dense_vit",
    params={
        "patch_size": ParamSpec("int", low=2, high=16, default=4, doc="side of the square patches (images are padded to fit)"),
        **transformer_params(embed_dim=64, num_heads=4, depth=2, mlp_ratio=2.0),
        "pos_embedding": ParamSpec("choice", choices=("learned", "sincos"), default="learned", doc="patch position embedding"),
    },
    uses_k_rule=False,
    doc="Patch ViT over the whole image (dense transformer baseline).",
)
class DenseViT(CellClassifier):
    """Conv patch embedding + position embedding -> CLS + ``depth`` transformer blocks -> head on CLS."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        patch_size: int,
        embed_dim: int,
        num_heads: int,
        depth: int,
        mlp_ratio: float,
        pos_embedding: str,
    ) -> None:
        super().__init__()
        if pos_embedding not in ("learned", "sincos"):
            raise ValueError(f"pos_embedding must be 'learned' or 'sincos', got {pos_embedding!r}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.patch_size, self.embed_dim, self.depth, self.mlp_ratio = patch_size, embed_dim, depth, mlp_ratio
        self.pos_kind = pos_embedding
        self.grid = math.ceil(image_size / patch_size)  # patch grid side at the built image size
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if pos_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", sincos_2d(self.grid, self.grid, embed_dim)[None], persistent=False)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.head = ClassifierHead(dim=embed_dim, num_classes=num_classes)

    def _grid_of(self, size: int) -> int:
        return -(-size // self.patch_size)  # ceil

    def _position(self, gh: int, gw: int) -> torch.Tensor:
        """(1, gh * gw, D) position embedding for a gh x gw patch grid."""
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        if self.pos_kind == "sincos":
            return sincos_2d(gh, gw, self.embed_dim).to(self.pos_embed)[None]
        table = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        table = F.interpolate(table, size=(gh, gw), mode="bicubic", align_corners=False)
        return table.flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        gh, gw = self._grid_of(H), self._grid_of(W)
        x = F.pad(images, (0, gw * self.patch_size - W, 0, gh * self.patch_size - H))
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self._position(gh, gw)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, N + 1, D)
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])  # (B, num_classes)

    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        return images.new_ones(B, H, W)

    def analytic_flops(self, images: torch.Tensor) -> float:
        """Patch-embedding conv, ``depth`` full-attention blocks over N + 1 tokens, and the head."""
        gh, gw = self._grid_of(images.shape[2]), self._grid_of(images.shape[3])
        flops = conv2d_flops(gh, gw, self.in_channels, self.embed_dim, self.patch_size)
        flops += self.depth * block_flops(gh * gw + 1, self.embed_dim, self.mlp_ratio)
        return flops + linear_flops(1, self.embed_dim, self.num_classes)
