"""Scientific images: 16-bit, float and multi-channel TIFF (phase / OPD stacks) through the folder
loader, a search, export and predict, with one definition of value scaling."""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from runner import predict as P
from runner.data import load_dataset
from runner.data.images import VALUE_SCALING, read_image, scale_values
from runner.engine.checkpoint import load_trained
from search_space.errors import DataError


def _opd(seed: int, label: int, size: int = 20) -> np.ndarray:
    """Two-channel 16-bit 'phase' image (planar, C first); class 1 has a brighter centre disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
    base = rng.integers(1000, 9000, (2, size, size)).astype(np.float64)
    base[0][disc] += 30000 * (1 + label)
    base[1][disc] += 12000 * label
    return base.astype(np.uint16)


def _tiff_folder(root: Path, per_class: int = 6) -> Path:
    for label, name in enumerate(["healthy", "infected"]):
        for split, count in (("train", per_class), ("val", 3), ("test", 3)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                tifffile.imwrite(folder / f"{i}.tif", _opd(1000 * label + 100 * len(split) + i, label),
                                 photometric="minisblack")
    return root


@pytest.mark.parametrize(("array", "kwargs"), [
    (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100, {}),                                  # 16-bit gray
    (np.linspace(-3, 3, 600, dtype=np.float32).reshape(20, 30), {}),                             # float phase
    (np.arange(1200, dtype=np.uint16).reshape(2, 20, 30), {"photometric": "minisblack"}),       # planar C, Y, X
    (np.arange(1800, dtype=np.float32).reshape(20, 30, 3) / 7, {"photometric": "minisblack",
                                                                 "planarconfig": "contig"}),      # interleaved
    (np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8), {"photometric": "rgb"}),
])
def test_tiff_layouts_read_as_height_width_channels(tmp_path: Path, array: np.ndarray, kwargs: dict) -> None:
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, array, **kwargs)
    x, info = read_image(path)
    want = array if array.ndim == 3 and array.shape[-1] in (3,) or array.ndim == 2 else np.moveaxis(array, 0, -1)
    want = want if want.ndim == 3 else want[..., None]
    assert x.shape == want.shape and x.dtype == np.float32 and info.size == (30, 20)
    np.testing.assert_array_equal(x, scale_values(want, path))


def test_one_scaling_rule() -> None:
    assert scale_values(np.array([0, 255], np.uint8), "a").tolist() == [0.0, 1.0]
    assert scale_values(np.array([0, 65535], np.uint16), "a").tolist() == [0.0, 1.0]
    assert scale_values(np.array([-2.5, 7.0], np.float64), "a").tolist() == [-2.5, 7.0]
    with pytest.raises(DataError, match="pixel type int32"):
        scale_values(np.array([1], np.int32), "a")
    with pytest.raises(DataError, match="NaN or infinite"):
        scale_values(np.array([np.nan], np.float32), "a")
    assert "uint16 / 65535" in VALUE_SCALING


def test_a_time_stack_is_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((40, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(DataError, match="up to 16 channels"):
        read_image(tmp_path / "stack.tif")


def test_folder_of_two_channel_16bit_tiffs_loads_scaled(tmp_path: Path) -> None:
    root = _tiff_folder(tmp_path / "opd")
    data = load_dataset(source="folder", path=root, image_size=16, seed=0)
    assert data.in_channels == 2 and data.modality == "multichannel" and data.class_names == ["healthy", "infected"]
    raw = np.stack([tifffile.imread(f) for f in sorted((root / "train").rglob("*.tif"))])  # (N, 2, H, W) uint16
    np.testing.assert_allclose(data.mean, raw.mean(axis=(0, 2, 3)) / 65535, rtol=0.02)  # normalised from 16-bit / 65535
    mixed = tmp_path / "mixed"
    _tiff_folder(mixed)
    tifffile.imwrite(mixed / "train" / "healthy" / "rgb.tif", np.zeros((20, 20, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match="differ in channels"):
        load_dataset(source="folder", path=mixed, image_size=16, seed=0)


def test_tiff_round_trip_search_export_predict(tmp_path: Path) -> None:
    """16-bit two-channel TIFFs -> search -> export -> predict on the same files = the trained model on
    the loader's images, with the card recording the scaling."""
    from runner.export import export_run
    from runner.search import main

    root = _tiff_folder(tmp_path / "opd")
    space = tmp_path / "opd.yaml"
    space.write_text(textwrap.dedent(f"""\
        name: opd
        seed: 0
        data: {{source: folder, path: {root}, image_size: 16, augment: false}}
        objectives: {{accuracy: maximize, flops: minimize}}
        training: {{epochs: 2, batch_size: 8, lr: 3.0e-3, warmup_epochs: 0.0}}
        search: {{trials: 1, sampler: {{name: random, seed: 0}}, backend: optuna}}
        space:
          strategy:
            dense_cnn: {{width: 4, stages: 1}}
        """), encoding="utf-8")
    run = tmp_path / "runs" / "opd"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--space", str(space), "--out", str(run)]) == 0
    export = export_run(run, measure=False, log=lambda line: None).out
    card = json.loads((export / "model_card.json").read_text())
    assert card["input"]["channels"] == 2 and card["input"]["modality"] == "multichannel"
    assert VALUE_SCALING in card["input"]["value_scale"]
    files = sorted((root / "test").rglob("*.tif"))
    result = P.predict(export, files)
    data = load_dataset(source="folder", path=root, image_size=16, seed=0)
    model = load_trained(run / "trials" / "0").model
    with torch.no_grad():
        want = torch.softmax(model(data.images("test")), dim=-1).numpy()
    assert result.predicted == [data.class_names[i] for i in want.argmax(axis=1)]
    np.testing.assert_allclose([float(r["probability"]) for r in result.rows], want.max(axis=1), atol=1e-5)
    # the same images as an array (N, H, W, C), scaled by dtype in the same way
    stack = np.stack([np.moveaxis(tifffile.imread(f), 0, -1) for f in files])
    assert P.predict(export, stack).predicted == result.predicted
