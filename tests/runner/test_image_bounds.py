"""runner.data.images: image files decoded within a bound (a pixel limit read from the header, reduced
while decoding when only a small copy is needed), Pillow's decompression-bomb guard handled."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.data import images as I
from search_space.errors import DataError


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (its data holds far fewer)."""
    Image.new("L", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    raw[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr: ihdr + 17])) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("side", [12_000, 20_000])  # above our limit; above Pillow's own error threshold too
def test_a_frame_above_the_pixel_limit_is_one_line_naming_the_file_and_the_limit(tmp_path: Path, side: int) -> None:
    path = png_claiming(tmp_path / "bomb.png", side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        for read in (I.image_info, I.read_image):
            with pytest.raises(DataError) as info:
                read(path)
            text = str(info.value)
            assert str(path) in text and f"{I.MAX_PIXELS:,}" in text and "\n" not in text


def test_a_frame_without_pixels_is_refused(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "empty.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tifffile: "zero-size array"; the point of the test
        tifffile.imwrite(path, np.zeros((0, 5), np.uint8))
    with pytest.raises(DataError):
        I.read_image(path)


def test_the_reduction_factor_keeps_a_margin_over_the_requested_side() -> None:
    assert I.reduction((10_000, 10_000), 16) == 10_000 // (I.REDUCE_KEEP * 16)
    assert I.reduction((10_000, 10_000), None) == 1
    assert I.reduction((4096, 4096), 16) == 1  # at or below REDUCE_ABOVE: decoded exactly as in training
    assert I.reduction((20_000, 1000), 64) == 1000 // (I.REDUCE_KEEP * 64)  # the short side decides


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reduce anything above 64 x 64 pixels, so a test needs no 16-megapixel file."""
    monkeypatch.setattr(I, "REDUCE_ABOVE", 64 * 64)


def _blob(size: int, channels: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    base = (np.sin(6 * xx) * np.cos(4 * yy) + 1) * 120
    return np.dstack([base + 5 * c for c in range(channels)]).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("suffix, mode", [(".png", "RGB"), (".png", "L"), (".png", "P"), (".png", "1"),
                                          (".png", "I;16"), (".jpg", "RGB"), (".tif", "RGB"), (".tif", "L")])
def test_a_large_frame_is_reduced_while_decoding_to_about_what_a_whole_decode_gives(
        tmp_path: Path, small_threshold: None, suffix: str, mode: str) -> None:
    array = _blob(512, 3)
    image = Image.fromarray(array)
    if mode == "L":
        image = image.convert("L")
    elif mode == "P":
        image = image.quantize(64)
    elif mode == "1":
        image = image.convert("L").point(lambda v: 255 if v > 120 else 0).convert("1")
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    path = tmp_path / f"big{suffix}"
    image.save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    whole, info = I.read_image(path)
    small, info_small = I.read_image(path, reduce_to=16)
    factor = 512 // (I.REDUCE_KEEP * 16)
    assert info == info_small and whole.shape == (512, 512, whole.shape[-1])
    assert small.shape[:2] == (512 // factor, 512 // factor) and small.shape[-1] == whole.shape[-1]
    assert small.dtype == np.float32
    reference = whole.reshape(512 // factor, factor, 512 // factor, factor, -1).mean(axis=(1, 3))
    assert np.abs(small - reference).mean() < 0.02  # same scale, same picture (JPEG's DCT scaling differs a little)


def test_tiff_box_means_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 65535, (37, 50, 2), dtype=np.uint16)
    got = I._box_mean(array, 8, "x")
    assert got.shape == (5, 7, 2)
    scaled = array.astype(np.float64) / 65535
    np.testing.assert_allclose(got[1, 2], scaled[8:16, 16:24].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(got[-1, -1], scaled[32:, 48:].mean(axis=(0, 1)), rtol=1e-5)  # partial boxes


def test_reduced_decoding_never_makes_a_full_size_float_copy(tmp_path: Path, small_threshold: None) -> None:
    """What keeps predict's memory bounded: the float copy is made of the reduced frame only."""
    import tracemalloc

    path = tmp_path / "big.png"
    Image.fromarray(_blob(1024, 3)).save(path)
    tracemalloc.start()
    try:
        small, _ = I.read_image(path, reduce_to=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert small.shape == (64, 64, 3)
    assert peak < 1024 * 1024 * 3 * 4 / 4  # far below one float32 copy of the whole frame (12 MB)
