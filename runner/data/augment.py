"""Orientation augmentation: cells under a microscope have no up, down, left or right."""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=16)
def _pixel_orders(height: int, width: int, device: torch.device) -> Tensor:
    """(T, H*W) gather indices on ``device``, one row per symmetry of the frame: the 8 flips and
    90-degree rotations of a square, or the 4 flips of a rectangle (a 90-degree turn would change
    its shape). Cached per device, so a GPU trial copies them there once, not once per batch."""
    grid = torch.arange(height * width).view(height, width)
    turns = range(4) if height == width else (0, 2)
    orders = [torch.rot90(grid, k, (0, 1)) for k in turns]
    orders += [o.flip(1) for o in orders]
    return torch.stack([o.reshape(-1) for o in orders]).to(device)


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Apply an independent random flip/90-degree rotation to every image of ``x`` (B, C, H, W).

    One gather on whatever device ``x`` lives on; the choices are drawn from ``generator`` (on its
    own device), so a seeded generator gives the same augmentation on CPU and GPU. With a CPU
    generator and ``x`` on a GPU only the B choices travel to the GPU, never image data. Each output
    image is a permutation of its input's pixels, the same permutation for all channels.
    """
    b, c, h, w = x.shape
    orders = _pixel_orders(h, w, x.device)  # (T, H*W)
    choice = torch.randint(len(orders), (b,), generator=generator, device=generator.device).to(x.device)
    index = orders[choice][:, None, :].expand(b, c, h * w)  # (B, C, H*W)
    return x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
