"""Image files and arrays as float pixel values: the one definition of value scaling.

The folder and npz loaders, ``runner.predict`` and the model card all use what is defined here, so
a model sees the same numbers in training and in deployment:

    uint8 / 255, uint16 / 65535, bool as 0 or 1, float (16, 32 or 64-bit) as stored

Files: TIFF through tifffile (8/16-bit and float, one channel or several: a multi-channel phase /
OPD stack, RGB, any channel count, planar or interleaved), everything else through Pillow (a 16-bit
PNG opened as Pillow's 32-bit mode ``I`` is scaled as 16-bit). Alpha is dropped (RGBA -> RGB, gray +
alpha -> gray). Values come back as (H, W, C) float32.

Bounded decoding. A small compressed file can hold a huge frame (a 97 KB PNG of 10000 x 10000
pixels), so an image file of more than ``MAX_PIXELS`` pixels (width x height, from its header) is
refused before its pixels are decoded, with one line naming the file and the limit. Pillow's own
guard (``Image.MAX_IMAGE_PIXELS``, about 89 M pixels: a warning above it, an error above twice it) is
left at its default for everyone else in the process; here its warning is silenced because the
header has just been checked against ``MAX_PIXELS``, and its error becomes the same one line.
A reader that only needs a small copy (``runner.predict`` resizes every frame to the model's size)
passes ``reduce_to``: a frame of more than ``REDUCE_ABOVE`` pixels is then reduced while it is
decoded, by the whole factor that keeps at least ``REDUCE_KEEP`` x ``reduce_to`` pixels on its short
side: JPEG decodes at 1/2, 1/4 or 1/8 scale (``Image.draft``), other Pillow formats are decoded and
box-reduced in their own 8/16/32-bit values (``Image.reduce``) before any float copy exists, TIFF
stacks are box-averaged a strip of rows at a time. A frame at or below ``REDUCE_ABOVE`` is decoded
exactly as the training loaders decode it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from search_space.errors import DataError

#: dtype -> factor; other dtypes: bool as 0/1, float as stored, anything else refused.
VALUE_SCALE: dict[np.dtype, float] = {np.dtype(np.uint8): 1 / 255, np.dtype(np.uint16): 1 / 65535}
VALUE_SCALING = "uint8 / 255, uint16 / 65535, bool as 0 or 1, float as stored"
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
MAX_CHANNELS = 16
_PIL_GRAY = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
#: The most pixels (width x height) one image file may hold: 2**27, e.g. 11585 x 11585. Decoding one
#: at the limit takes at most 4 bytes a pixel in Pillow (512 MB), 2 x channels in a 16-bit TIFF.
MAX_PIXELS = 2**27
#: Frames above this many pixels are reduced while decoding when the reader asks for a small copy.
REDUCE_ABOVE = 4096 * 4096
#: ... down to no fewer than this many times the requested side on the frame's short side.
REDUCE_KEEP = 4
_PIL_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})  # the modes Image.reduce takes


@dataclass(frozen=True)
class ImageInfo:
    """What a file holds, from its header: channels (alpha not counted), (width, height), value dtype."""

    channels: int
    size: tuple[int, int]
    dtype: str  # numpy dtype name of the stored values: uint8, uint16, float32, bool, ...
    alpha: bool = False


def modality_for(channels: int) -> str:
    """A real-image dataset's modality from its channel count."""
    return {1: "gray", 3: "rgb"}.get(channels, "multichannel")


def scale_values(array: np.ndarray, where: str | Path) -> np.ndarray:
    """Stored values -> float32 in the documented scale; DataError for other dtypes or non-finite floats."""
    factor = VALUE_SCALE.get(array.dtype)
    if factor is not None:
        return array.astype(np.float32) * np.float32(factor)  # multiplied (not divided), as the npz loader always has
    if array.dtype.kind == "b":
        return array.astype(np.float32)
    if array.dtype.kind == "f":
        x = array.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{where}: the image contains NaN or infinite values")
        return x
    raise DataError(f"{where}: pixel type {array.dtype}; expected uint8, uint16, bool or float values ({VALUE_SCALING})")


def _too_large(path: Path, size: tuple[int, int] | int | None) -> str:
    what = (f"{size[0]} x {size[1]} pixels" if isinstance(size, tuple) else f"{size:,} pixels" if size
            else "more pixels than Pillow opens")
    return (f"{path}: {what}, more than the limit of {MAX_PIXELS:,} pixels for one image "
            "(runner.data.images.MAX_PIXELS); crop or downscale it first")


def _check_size(path: Path, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_PIXELS:
        raise DataError(_too_large(path, size))
    if size[0] < 1 or size[1] < 1:
        raise DataError(f"{path}: an image of {size[0]} x {size[1]} pixels holds no pixels")


@contextmanager
def _pil_open(path: Path) -> Iterator[Image.Image]:
    """Image.open with Pillow's decompression-bomb guard handled deliberately (module docstring), the
    size checked against ``MAX_PIXELS`` before anything is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as err:  # Pillow says how many: "Image size (N pixels) exceeds ..."
            found = re.search(r"\((\d+) pixels\)", str(err))
            raise DataError(_too_large(path, int(found.group(1)) if found else None)) from None
    with im:
        _check_size(path, im.size)
        yield im


def image_info(path: Path) -> ImageInfo:
    """The header of an image file (pixels unread); DataError when it cannot be read, or holds more
    than ``MAX_PIXELS`` pixels (or none)."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _tiff_info(path)
        with _pil_open(path) as im:
            mode, size = im.mode, im.size
            alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means the file is unreadable
        raise DataError(f"{path}: cannot read image ({_line(err)})") from None
    dtype = {"F": "float32", "I": "uint16", "1": "bool"}.get(mode, "uint16" if mode.startswith("I;16") else "uint8")
    return ImageInfo(1 if mode in _PIL_GRAY else 3, size, dtype, alpha)


def reduction(size: tuple[int, int], reduce_to: int | None) -> int:
    """The whole factor a frame of ``size`` (width, height) is reduced by while decoding for a copy of
    side ``reduce_to`` (1: decoded whole; see the module docstring)."""
    width, height = size
    if not reduce_to or width * height <= REDUCE_ABOVE:
        return 1
    return max(1, min(width, height) // (REDUCE_KEEP * int(reduce_to)))


def read_image(path: Path, *, reduce_to: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """An image file as (H, W, C) float32 in the documented scale (alpha dropped), and its header.

    ``reduce_to``: the side of the copy the caller will resize to; a frame above ``REDUCE_ABOVE``
    pixels is then reduced while decoding (module docstring), so memory stays bounded."""
    path = Path(path)
    info = image_info(path)
    tiff = path.suffix.lower() in TIFF_SUFFIXES
    try:
        array = _tiff_pixels(path) if tiff else _pil_pixels(path, reduce_to)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: cannot read image ({_line(err)})") from None
    if array.shape[-1] > info.channels:  # alpha
        array = array[..., : info.channels]
    factor = reduction((array.shape[1], array.shape[0]), reduce_to) if tiff else 1
    if factor > 1:
        return _box_mean(array, factor, path), info
    return scale_values(array, path), info


def _box_mean(array: np.ndarray, factor: int, where: str | Path) -> np.ndarray:
    """(H, W, C) stored values -> (ceil(H/f), ceil(W/f), C) float32 means of f x f boxes (the last ones
    partial, as Image.reduce), scaled; one strip of f rows in float at a time."""
    height, width, channels = array.shape
    starts = np.arange(0, width, factor)
    widths = np.minimum(starts + factor, width) - starts
    out = np.empty((-(-height // factor), len(starts), channels), dtype=np.float32)
    for row, top in enumerate(range(0, height, factor)):
        strip = scale_values(array[top: top + factor], where)  # (<=f, W, C)
        sums = np.add.reduceat(strip.sum(axis=0, dtype=np.float64), starts, axis=0)  # (W/f, C)
        out[row] = sums / (widths[:, None] * strip.shape[0])
    return out


def _line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _tiff_axes(path: Path, shape: tuple[int, ...], axes: str) -> str:
    """The axes that matter (Y, X and at most one channel axis; length-1 axes dropped); DataError for
    stacks that are not one multi-channel image."""
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: a TIFF of axes {axes} {shape}; expected an image (Y, X) with optional channels")
    other = [a for a, n in zip(axes, shape, strict=True) if a not in "YX" and n > 1]
    if len(other) > 1 or (other and shape[axes.index(other[0])] > MAX_CHANNELS):
        raise DataError(f"{path}: a TIFF of axes {axes} {shape}: one image with up to {MAX_CHANNELS} channels "
                        "expected (a stack over time, depth or positions is not one cell image)")
    return "".join(a for a, n in zip(axes, shape, strict=True) if a in "YX" or n > 1)


def _tiff_info(path: Path) -> ImageInfo:
    import tifffile  # tifffile is heavy: only TIFF files need it

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            extra = tuple(getattr(tif.pages.first, "extrasamples", ()) or ())
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: cannot read TIFF ({_line(err)})") from None
    kept = _tiff_axes(path, shape, axes)
    sizes = {a: n for a, n in zip(axes, shape, strict=True) if a in kept}
    _check_size(path, (sizes["X"], sizes["Y"]))
    channels = next((n for a, n in sizes.items() if a not in "YX"), 1)
    alpha = bool(extra) and extra[-1] in (1, 2) and channels in (2, 4)  # associated / unassociated alpha
    return ImageInfo(channels - int(alpha), (sizes["X"], sizes["Y"]), dtype.name, alpha)


def _tiff_pixels(path: Path) -> np.ndarray:
    """(H, W, C) as stored, whatever the file's axis order (interleaved YXS, planar SYX/CYX, ...)."""
    import tifffile  # tifffile is heavy: only TIFF files need it

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
    kept = _tiff_axes(path, array.shape, axes)
    array = array.reshape([n for a, n in zip(axes, array.shape, strict=True) if a in kept and (a in "YX" or n > 1)])
    order = [kept.index("Y"), kept.index("X")] + [i for i, a in enumerate(kept) if a not in "YX"]
    array = np.transpose(array, order)
    return array if array.ndim == 3 else array[..., None]


def _pil_pixels(path: Path, reduce_to: int | None = None) -> np.ndarray:
    with _pil_open(path) as opened:
        im = opened
        factor = reduction(im.size, reduce_to)
        if factor > 1:  # JPEG: decode at 1/2, 1/4 or 1/8 scale; no-op for other formats
            im.draft(im.mode, (-(-im.size[0] // factor), -(-im.size[1] // factor)))
        im.load()
        if factor > 1:
            im = _reduced(im, max(1, min(im.size) // (REDUCE_KEEP * int(reduce_to))))
        mode = im.mode
        if mode == "F":
            array = np.asarray(im, dtype=np.float32)
        elif mode.startswith("I;16"):
            array = np.asarray(im).astype(np.uint16)
        elif mode == "I":  # Pillow's 32-bit mode, what it opens 16-bit PNGs as
            raw = np.asarray(im)
            if raw.min(initial=0) < 0 or raw.max(initial=0) > 65535:
                raise DataError(f"{path}: 32-bit integer pixels outside 0..65535; save as 16-bit or float")
            array = raw.astype(np.uint16)
        elif mode in _PIL_GRAY:
            array = np.asarray(im.convert("L"))
        else:
            array = np.asarray(im.convert("RGB"))
    return array if array.ndim == 3 else array[..., None]


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    """``im`` box-reduced by ``factor`` in its own values (modes Image.reduce lacks converted first,
    keeping their scale: 1 -> L as 0/255, I;16 -> I, P -> RGB/RGBA)."""
    if factor <= 1:
        return im
    if im.mode not in _PIL_REDUCIBLE:
        mode = ("L" if im.mode == "1" else "I" if im.mode.startswith("I;16")
                else "RGBA" if "transparency" in im.info or im.mode in ("PA", "RGBa", "La") else "RGB")
        im = im.convert(mode)
    return im.reduce(factor)
