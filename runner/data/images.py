"""Image files and arrays as float pixel values: the one definition of value scaling.

The folder and npz loaders, ``runner.predict`` and the model card all use what is defined here, so
a model sees the same numbers in training and in deployment:

    uint8 / 255, uint16 / 65535, bool as 0 or 1, float (16, 32 or 64-bit) as stored

Files: TIFF through tifffile (8/16-bit and float, one channel or several: a multi-channel phase /
OPD stack, RGB, any channel count, planar or interleaved), everything else through Pillow (a 16-bit
PNG opened as Pillow's 32-bit mode ``I`` is scaled as 16-bit). Alpha is dropped (RGBA -> RGB, gray +
alpha -> gray). Values come back as (H, W, C) float32.
"""

from __future__ import annotations

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


def image_info(path: Path) -> ImageInfo:
    """The header of an image file (pixels unread); DataError when it cannot be read."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _tiff_info(path)
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means the file is unreadable
        raise DataError(f"{path}: cannot read image ({_line(err)})") from None
    dtype = {"F": "float32", "I": "uint16", "1": "bool"}.get(mode, "uint16" if mode.startswith("I;16") else "uint8")
    return ImageInfo(1 if mode in _PIL_GRAY else 3, size, dtype, alpha)


def read_image(path: Path) -> tuple[np.ndarray, ImageInfo]:
    """An image file as (H, W, C) float32 in the documented scale (alpha dropped), and its header."""
    path = Path(path)
    info = image_info(path)
    try:
        array = _tiff_pixels(path) if path.suffix.lower() in TIFF_SUFFIXES else _pil_pixels(path)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: cannot read image ({_line(err)})") from None
    if array.shape[-1] > info.channels:  # alpha
        array = array[..., : info.channels]
    return scale_values(array, path), info


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


def _pil_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
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
