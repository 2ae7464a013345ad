"""Small PNGs of what a model looked at, as base64 data URIs (numpy + zlib only, no image library).

Images are embedded at their own resolution (cell crops are 28-64 px) and upscaled by the page with
nearest-neighbour CSS (``image-rendering: pixelated``): sharp pixels at a fraction of the bytes. Fields
(up to 512 px) are block-averaged to at most ``DISPLAY_MAX_SIDE`` first."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

OVERLAY_RGB = np.array([1.0, 0.2, 0.1])  # used pixels are tinted red-orange
DISPLAY_MAX_SIDE = 192  # larger frames are shown block-averaged to at most this side


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (8-bit truecolour, filter 0 on every row)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"encode_png needs (H, W, 3) uint8, but got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def data_uri(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 -> ``data:image/png;base64,...``."""
    return "data:image/png;base64," + base64.b64encode(encode_png(rgb)).decode("ascii")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) floats in [0, 1] or uint8 -> (H, W, 3) floats in [0, 1]; 1 channel is grey,
    other counts use the mean."""
    scale = 1 / 255 if np.asarray(image).dtype == np.uint8 else 1.0
    image = np.nan_to_num(np.asarray(image, dtype=float) * scale, nan=0.0)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"expected an image (C, H, W), but got shape {image.shape}")
    grey = image.shape[0] != 3
    rgb = np.repeat(image.mean(axis=0, keepdims=True), 3, axis=0) if grey else image
    return np.clip(rgb.transpose(1, 2, 0), 0.0, 1.0)


def overlay(rgb: np.ndarray, used: np.ndarray, strength: float = 0.3) -> np.ndarray:
    """Dim what was not used and tint what was: (H, W, 3) and (H, W) in [0, 1] -> (H, W, 3)."""
    used = np.clip(np.nan_to_num(np.asarray(used, dtype=float)), 0.0, 1.0)[..., None]
    dimmed = rgb * (0.35 + 0.65 * used)
    return np.clip(dimmed * (1 - strength * used) + OVERLAY_RGB * strength * used, 0.0, 1.0)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def shrink(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks of the first two axes (the border that does not fill a block is cut)."""
    if factor <= 1:
        return array
    h, w = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    blocks = array[:h, :w].reshape(h // factor, factor, w // factor, factor, *array.shape[2:])
    return blocks.mean(axis=(1, 3))


def looked_at_pair(image: np.ndarray, used: np.ndarray) -> tuple[str, str, float]:
    """The image and its used-map overlay as data URIs, and the fraction of the image used.

    Frames larger than :data:`DISPLAY_MAX_SIDE` are shown block-averaged (the used map too, so a block
    is tinted by the share of its pixels used): a page of 512-px frames stays a few MB."""
    rgb = to_rgb(image)
    used = np.clip(np.nan_to_num(np.asarray(used, dtype=float)), 0, 1)
    if used.shape != rgb.shape[:2]:
        raise ValueError(f"used map {used.shape} does not match image {rgb.shape[:2]}")
    fraction = float(used.mean())
    factor = -(-max(rgb.shape[:2]) // DISPLAY_MAX_SIDE)
    rgb, used = shrink(rgb, factor), shrink(used, factor)
    return data_uri(to_uint8(rgb)), data_uri(to_uint8(overlay(rgb, used))), fraction
