"""Orientation augmentation: cells under a microscope have no up, down, left or right."""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=16)
def _pixel_orders(height: int, width: int) -> Tensor:
    """(T, H*W) gather indices, one row per symmetry of the frame: the 8 flips and 90-degree rotations
    of a square, or the 4 flips of a rectangle (a 90-degree turn would change its shape)."""
    grid = torch.arange(height * width).view(height, width)
    turns = range(4) if height == width else (0, 2)
    orders = [torch.rot90(grid, k, (0, 1)) for k in turns]
    orders += [o.flip(1) for o in orders]
    return torch.stack([o.reshape(-1) for o in orders])


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Apply an independent random flip/90-degree rotation to every image of ``x`` (B, C, H, W).

    One gather on whatever device ``x`` lives on; the choices are drawn from ``generator`` (on its
    own device), so a seeded generator gives the same augmentation on CPU and GPU. Each output image
    is a permutation of its input's pixels, the same permutation for all channels.
    """
    b, c, h, w = x.shape
    orders = _pixel_orders(h, w)
    choice = torch.randint(len(orders), (b,), generator=generator, device=generator.device).cpu()
    index = orders[choice].to(x.device)[:, None, :].expand(b, c, h * w)  # (B, C, H*W)
    return x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
