"""``runner.predict`` within bounds: memory that does not grow with the frames or the folder, values that
overflow once normalised, images without pixels, and an --out that never replaces what predict did not
write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cellsparse.errors import UserError
from runner import predict as P
from runner.data import images as I
from tests.runner.export_fixtures import tiny_export
from tests.runner.test_image_bounds import png_claiming


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "export_runs", "sparse_topk")[0]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = P.main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return status, err


def _blob(size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    base = (np.sin(6 * xx) * np.cos(4 * yy) + 1) * 120
    return np.dstack([base, base * 0.8, base * 0.6]).astype(np.uint8)


def test_a_folder_of_large_frames_is_preprocessed_one_decoded_frame_at_a_time(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak (numpy) memory of preprocessing a batch does not grow with its frames' size or count: each is
    reduced while decoding and resized before the next is read, and no full-size stack is built."""
    import tracemalloc

    monkeypatch.setattr(I, "REDUCE_ABOVE", 64 * 64)
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.roll(_blob(1024), 40 * i, axis=1)).save(folder / f"cell{i}.png")
    spec = P.InputSpec(3, 16, "rgb", np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))
    items = P.collect([folder])
    peaks = []
    for batch in (items[:1], items):
        tracemalloc.start()
        try:
            x = P.preprocess(batch, spec)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert x.shape == (len(batch), 3, 16, 16) and np.isfinite(x).all()
    frame = 1024 * 1024 * 3 * 4  # one float32 copy of one whole frame
    assert peaks[1] < frame / 4 and peaks[1] < peaks[0] + 100_000


def test_predictions_of_a_reduced_frame_are_those_of_the_whole_frame(tmp_path: Path, export_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cell.png"
    Image.fromarray(_blob(1024)).save(path)
    whole = P.predict(export_dir, [path])
    monkeypatch.setattr(I, "REDUCE_ABOVE", 64 * 64)
    reduced = P.predict(export_dir, [path])
    assert reduced.predicted == whole.predicted
    assert abs(float(reduced.rows[0]["probability"]) - float(whole.rows[0]["probability"])) < 0.01


def test_a_decompression_bomb_in_a_folder_is_one_line(export_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_blob(24)).save(folder / "a.png")
    bomb = png_claiming(folder / "b.png", 30_000, 30_000)  # a 900-megapixel header in a 70-byte file
    out = tmp_path / "p.csv"
    status, err = _cli([export_dir, folder, "--out", out], capsys)
    assert status == 2 and err.count("\n") == 0 and str(bomb) in err and f"{I.MAX_PIXELS:,}" in err
    assert not out.exists()


HUGE = np.float32(3e38)


@pytest.mark.parametrize("where", ["npz", "array", "tensor"])
def test_finite_values_that_overflow_once_normalised_are_refused(export_dir: Path, tmp_path: Path, where: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    images = np.full((2, 16, 16, 3), 0.5, np.float32)
    images[1, 3, 4] = HUGE  # finite as stored; the resize and (x - mean) / std make it inf / NaN
    if where == "npz":
        path = tmp_path / "huge.npz"
        np.savez(path, test_images=images)
        out = tmp_path / "p.csv"
        status, err = _cli([export_dir, path, "--out", out], capsys)
        assert status == 2 and err.count("\n") == 0 and f"{path}:test_images[1]" in err and "NaN" in err
        assert not out.exists()
        return
    given = images if where == "array" else torch.from_numpy(images).permute(0, 3, 1, 2)
    with pytest.raises(UserError, match=r"array\[1\]: its values overflow"):
        P.predict(export_dir, given)


@pytest.mark.parametrize("shape", [(0, 0), (1, 0, 0), (2, 0, 5, 3), (3, 4, 0)])
def test_an_image_without_pixels_is_one_line(export_dir: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(UserError, match="holds no pixels|empty") as info:
        P.predict(export_dir, np.zeros(shape, np.float32))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="holds no pixels|empty"):
        P.predict(export_dir, torch.zeros((1, 3, 0, 0)))


def test_out_never_replaces_a_file_predict_did_not_write(export_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "cell.png"
    Image.fromarray(_blob(24)).save(image)
    table = tmp_path / "mine.csv"
    table.write_text("id,weight\n1,2\n")
    model = next(export_dir.glob("model.*"))
    for target in (image, model, table, export_dir / "model_card.json"):
        before = target.read_bytes()
        status, err = _cli([export_dir, image, "--out", target], capsys)
        assert status == 2 and err.count("\n") == 0 and "not a predictions CSV written by runner.predict" in err
        assert target.read_bytes() == before
    link = tmp_path / "link.csv"
    link.symlink_to(table)
    status, err = _cli([export_dir, image, "--out", link], capsys)
    assert status == 2 and "symbolic link" in err and table.read_text() == "id,weight\n1,2\n"

    earlier = tmp_path / "predictions.csv"
    assert _cli([export_dir, image, "--out", earlier], capsys)[0] == 0
    first = earlier.read_text()
    assert first.startswith(P.CSV_START)
    assert _cli([export_dir, image, image, "--out", earlier], capsys)[0] == 0  # an earlier output is replaced
    assert earlier.read_text() != first and earlier.read_text().count("cell.png") == 2
