"""The data-set builders (runner.data.builders) on small fake clones laid out like the real ones:
shapes, labels, crops, the split by original, the cell window, refusals and atomic writes."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.data.builders import pbc, shared, wbc_fields
from runner.data.npz import BLOODMNIST_CLASSES, describe_npz

SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------
# Fake clones


def pbc_clone(root: Path, per_class: int = 10, size: tuple[int, int] = (14, 15)) -> Path:
    """``root/PBC_dataset_normal_DIB/<class>/*.png``: frames of ``size`` (w, h) with distinct pixels."""
    rng = np.random.default_rng(0)
    for name in pbc.CLASS_FOLDERS:
        folder = root / pbc.FOLDER / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name[:2].upper()}_{i}.png")
    return root


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def field(rng: np.random.Generator, cell: tuple[int, int], radius: int = 5, w: int = 64, h: int = 48,
          platelets: int = 2) -> np.ndarray:
    """A fake smear field: pale background, red cells, purple platelets and one purple white cell."""
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = (235, 225, 170)
    for _ in range(12):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = (205, 150, 140)
    for _ in range(platelets):
        py, px = rng.integers(0, h), rng.integers(0, w)
        img[(yy - py) ** 2 + (xx - px) ** 2 <= 1] = (140, 60, 170)
    img[(yy - cell[0]) ** 2 + (xx - cell[1]) ** 2 <= radius**2] = (110, 50, 170)
    return img


def wbc_clone(root: Path, originals: dict[str, int], copies: int = 2, platelets: int = 2) -> Path:
    """``root/WBC Classification Dataset/<CLASS>/<n>.jpg`` plus ``<CLASS>_original_<n>.jpg_<uuid>.jpg``
    copies (flipped), a ``Copy of <n>.jpg`` duplicate and one same-pixels file under another number."""
    rng = np.random.default_rng(1)
    number = 1
    for name, count in originals.items():
        folder = root / wbc_fields.FOLDER / name
        folder.mkdir(parents=True)
        for _ in range(count):
            cell = (int(rng.integers(8, 40)), int(rng.integers(10, 54)))
            pixels = field(rng, cell, platelets=platelets)
            Image.fromarray(pixels).save(folder / f"{number}.jpg", quality=95, subsampling=0)
            for _ in range(copies):
                Image.fromarray(pixels[:, ::-1]).save(folder / f"{name}_original_{number}.jpg_{uuid.uuid4()}.jpg")
            number += 1
        shutil.copy(folder / f"{number - 1}.jpg", folder / f"Copy of {number - 1}.jpg")
    shutil.copy(folder / f"{number - 1}.jpg", folder / f"{number}.jpg")  # the same image under a new number
    return root


def assert_one_error_line(err: str, expected: str) -> None:
    """stderr holds progress lines, then the error: one line, no traceback."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1], err
    assert all(line.endswith(" frames ...") for line in lines[:-1]), err


def build_pbc(clone: Path, out: Path, *extra: str) -> int:
    return pbc.main(["--clone", str(clone), "--out", str(out), "--crop", "12", *extra])


def build_wbc(clone: Path, out: Path, *extra: str) -> int:
    return wbc_fields.main(["--clone", str(clone), "--out", str(out), *extra])


# ---------------------------------------------------------------------------------------------
# PBC


def test_pbc_writes_centred_crops_in_bloodmnist_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clone = pbc_clone(tmp_path / "clone")
    out = tmp_path / "pbc12.npz"
    assert build_pbc(clone, out) == 0
    data = load(out)
    assert list(data["class_names"]) == list(BLOODMNIST_CLASSES)
    assert str(data["builder"]) == pbc.MODULE
    for s, n in zip(SPLITS, (7, 1, 2), strict=True):
        assert data[f"{s}_images"].shape == (8 * n, 12, 12, 3) and data[f"{s}_images"].dtype == np.uint8
        assert data[f"{s}_labels"].shape == (8 * n, 1) and data[f"{s}_labels"].dtype == np.uint8
        assert (np.bincount(data[f"{s}_labels"][:, 0], minlength=8) == n).all()
    files = {s: list(data[f"{s}_files"]) for s in SPLITS}
    assert sum(len(f) for f in files.values()) == len(set().union(*files.values())) == 80
    # each frame is the centred 12x12 of its 14x15 source, and its label is its folder's place
    for s in SPLITS:
        for image, label, name in zip(data[f"{s}_images"], data[f"{s}_labels"][:, 0], files[s], strict=True):
            source = np.asarray(Image.open(clone / pbc.FOLDER / name))
            assert np.array_equal(image, source[1:13, 1:13])
            assert name.split("/")[0] == pbc.CLASS_FOLDERS[label]
    assert describe_npz(out, image_size=None, class_names=None) == (3, 8, 12)
    assert "train/val/test = 56 / 8 / 16" in capsys.readouterr().out


def test_pbc_caps_keep_a_subset_of_each_split_and_size_resizes(tmp_path: Path) -> None:
    clone = pbc_clone(tmp_path / "clone", per_class=20)
    full, capped, small = tmp_path / "full.npz", tmp_path / "capped.npz", tmp_path / "small.npz"
    assert build_pbc(clone, full) == 0
    assert build_pbc(clone, capped, "--per-class", "10", "--size", "6") == 0
    assert build_pbc(clone, small, "--limit", "30") == 0
    a, b, c = load(full), load(capped), load(small)
    assert b["train_images"].shape == (56, 6, 6, 3) and len(b["test_files"]) == 16
    assert sum(len(c[f"{s}_files"]) for s in SPLITS) == 30
    for s in SPLITS:  # a smaller file never tests on what the larger one trains on
        assert set(b[f"{s}_files"]) <= set(a[f"{s}_files"])
        assert set(c[f"{s}_files"]) <= set(a[f"{s}_files"])
    other = tmp_path / "seed1.npz"
    assert build_pbc(clone, other, "--seed", "1") == 0
    assert set(load(other)["test_files"]) != set(a["test_files"])


def test_pbc_passes_over_hidden_files_and_enlarges_small_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clone = pbc_clone(tmp_path / "clone")
    (clone / pbc.FOLDER / "neutrophil" / ".DS_169665.jpg").write_bytes(b"\x00\x00\x00\x01Bud1")  # what the real clone has
    Image.new("RGB", (10, 11), (9, 9, 9)).save(clone / pbc.FOLDER / "platelet" / "PLT_small.png")
    out = tmp_path / "pbc.npz"
    assert build_pbc(clone, out) == 0
    text = capsys.readouterr().out
    assert "passed over 1 hidden or non-image file" in text and "1 frame(s) smaller than 12 px" in text
    data = load(out)
    names = np.concatenate([data[f"{s}_files"] for s in SPLITS])
    assert len(names) == 81 and not any(".DS" in n for n in names)


@pytest.mark.parametrize("damage, expected", [
    ("no clone", "no such folder"),
    ("no dataset folder", "no PBC_dataset_normal_DIB folder"),
    ("missing class", "missing class folder(s) ig"),
    ("extra folder", "unexpected folder(s) extra"),
    ("empty class", "basophil: no image files"),
    ("lfs pointer", "a Git LFS pointer, not an image"),
    ("truncated image", "cannot read image"),
])
def test_pbc_refuses_a_wrong_clone_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, expected: str
) -> None:
    clone = pbc_clone(tmp_path / "clone", per_class=4)
    folder = clone / pbc.FOLDER
    if damage == "no clone":
        clone = tmp_path / "nowhere"
    elif damage == "no dataset folder":
        shutil.rmtree(folder)
        (clone / "README.md").write_text("x")
    elif damage == "missing class":
        shutil.rmtree(folder / "ig")
    elif damage == "extra folder":
        (folder / "extra").mkdir()
    elif damage == "empty class":
        for p in (folder / "basophil").iterdir():
            p.unlink()
    elif damage == "lfs pointer":
        (folder / "monocyte" / "MO_0.png").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    else:  # the last class's file: the failure comes after frames were already written
        data = (folder / "platelet" / "PL_3.png").read_bytes()
        (folder / "platelet" / "PL_3.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "pbc.npz"
    assert build_pbc(clone, out) == 2
    assert_one_error_line(capsys.readouterr().err, expected)
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no half-written temporary file


# ---------------------------------------------------------------------------------------------
# Writing: never over what a builder did not write


@pytest.mark.parametrize("foreign", ["text", "npz", "folder"])
def test_builders_never_overwrite_what_they_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], foreign: str
) -> None:
    clone = pbc_clone(tmp_path / "clone", per_class=4)
    out = tmp_path / "data.npz"
    if foreign == "text":
        out.write_text("my notes")
    elif foreign == "npz":
        np.savez(out, train_images=np.zeros((1, 2, 2, 3), np.uint8))
    else:
        out.mkdir()
    before = out.read_bytes() if out.is_file() else None
    assert build_pbc(clone, out) == 2
    err = capsys.readouterr().err
    assert "not written by a builder" in err or "is a folder" in err
    assert (out.read_bytes() if out.is_file() else None) == before


def test_builders_overwrite_their_own_file(tmp_path: Path) -> None:
    clone = pbc_clone(tmp_path / "clone", per_class=4)
    out = tmp_path / "data.npz"
    assert build_pbc(clone, out) == 0
    assert shared.written_by(out) == pbc.MODULE
    assert build_pbc(clone, out, "--size", "4") == 0
    assert load(out)["train_images"].shape[1:] == (4, 4, 3)


# ---------------------------------------------------------------------------------------------
# White cells in smear fields


def frame_cells(image: np.ndarray) -> np.ndarray:
    """Pixels of the fake white cell (purple, darker than the platelets) in an output frame."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return (r < 135) & (g < 85) & (b > 140)


def test_find_cell_finds_the_large_purple_cell_not_a_platelet() -> None:
    rng = np.random.default_rng(3)
    for cell in [(10, 12), (30, 50), (24, 32)]:
        found = wbc_fields.find_cell(field(rng, cell))
        y0, x0, y1, x1 = found.box
        assert found.found and y0 <= cell[0] < y1 and x0 <= cell[1] < x1, (cell, found)
        assert 6 <= y1 - y0 <= 16 and 6 <= x1 - x0 <= 16
    blank = np.full((48, 64, 3), (235, 225, 170), dtype=np.uint8)
    assert not wbc_fields.find_cell(blank).found
    assert wbc_fields.window((48, 64), wbc_fields.find_cell(blank), np.random.default_rng(0)) == (0, 8, 48)


def test_wbc_splits_by_original_and_keeps_copies_out_of_val_and_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clone = wbc_clone(tmp_path / "clone", {"EOSINOPHIL": 12, "LYMPHOCYTE": 10, "MONOCYTE": 2, "NEUTROPHIL": 12})
    out = tmp_path / "wbc.npz"
    assert build_wbc(clone, out, "--train-copies") == 0
    text = capsys.readouterr().out
    assert "dropped, fewer than --min-originals 10: monocyte (2 originals)" in text
    assert "stained cell found in" in text
    data = load(out)
    assert list(data["class_names"]) == ["eosinophil", "lymphocyte", "neutrophil"]
    originals = {s: set(data[f"{s}_originals"].tolist()) for s in SPLITS}
    assert not (originals["train"] & originals["val"] or originals["train"] & originals["test"]
                or originals["val"] & originals["test"])
    assert sum(len(o) for o in originals.values()) == 12 + 10 + 12  # duplicate files add no original
    assert "5 duplicate files" in text  # a "Copy of" in each of the 4 classes, one file under a second number
    for s in ("val", "test"):  # one frame per original, never a copy or a duplicate
        assert len(data[f"{s}_files"]) == len(originals[s])
        assert not any("_original_" in n or "Copy of" in n for n in data[f"{s}_files"])
    train = list(data["train_files"])
    copies = [n for n in train if "_original_" in n]
    assert len(copies) == 2 * len(originals["train"])  # two copies of each original, none of a duplicate
    # a copy sits beside its own original's frame: same original id, same label
    by_name = dict(zip(train, data["train_originals"].tolist(), strict=True))
    labels = dict(zip(train, data["train_labels"][:, 0].tolist(), strict=True))
    for name in copies:
        folder, base = name.split("/")
        source = f"{folder}/{wbc_fields.COPY_NAME.match(base)['original']}"
        assert by_name[name] == by_name[source] and labels[name] == labels[source]
    assert describe_npz(out, image_size=None, class_names=None) == (3, 3, 48)


def test_wbc_window_keeps_the_cell_whole_at_varying_places(tmp_path: Path) -> None:
    clone = wbc_clone(tmp_path / "clone", {"EOSINOPHIL": 12, "NEUTROPHIL": 12}, copies=0, platelets=0)
    out = tmp_path / "wbc.npz"
    assert build_wbc(clone, out) == 0
    data = load(out)
    images = np.concatenate([data[f"{s}_images"] for s in SPLITS])
    boxes = np.concatenate([data[f"{s}_boxes"] for s in SPLITS])
    files = np.concatenate([data[f"{s}_files"] for s in SPLITS])
    assert images.shape[1:] == (48, 48, 3)
    offsets = set()
    for image, (y0, x0, y1, x1), name in zip(images, boxes, files, strict=True):
        cell = frame_cells(image)
        ys, xs = np.nonzero(cell)
        assert cell.sum() >= 60, "the cell was cut by the window"  # a radius-5 disc is 81 px
        # the box is found at half resolution: it may miss a blurred edge pixel or two
        assert y0 - 2 <= ys.min() and ys.max() < y1 + 2 and x0 - 2 <= xs.min() and xs.max() < x1 + 2
        source = np.asarray(Image.open(clone / wbc_fields.FOLDER / name).convert("RGB"))
        offsets |= {x for x in range(17) if np.array_equal(source[:, x:x + 48], image)}
    assert len(offsets) >= 5  # the window is not always in one place
    again = tmp_path / "again.npz"
    assert build_wbc(clone, again) == 0
    assert np.array_equal(load(again)["train_images"], data["train_images"])
    other = tmp_path / "seed1.npz"
    assert build_wbc(clone, other, "--seed", "1", "--size", "24") == 0
    resized = load(other)
    assert resized["train_images"].shape[1:] == (24, 24, 3) and resized["train_boxes"].max() <= 24


def test_wbc_keeps_a_small_class_only_when_asked_and_when_it_can_be_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clone = wbc_clone(tmp_path / "clone", {"EOSINOPHIL": 10, "MONOCYTE": 3, "NEUTROPHIL": 10}, copies=1)
    out = tmp_path / "wbc.npz"
    assert build_wbc(clone, out, "--min-originals", "0") == 0
    data = load(out)
    assert "monocyte" in list(data["class_names"])
    assert all((data[f"{s}_labels"][:, 0] == 1).sum() == 1 for s in SPLITS)
    shutil.rmtree(clone / wbc_fields.FOLDER / "MONOCYTE")
    small = wbc_clone(tmp_path / "small", {"EOSINOPHIL": 10, "MONOCYTE": 2}, copies=1)
    capsys.readouterr()
    assert build_wbc(small, tmp_path / "small.npz", "--min-originals", "0") == 2
    assert "class 'monocyte': 2 item(s) cannot be split" in capsys.readouterr().err


@pytest.mark.parametrize("damage, expected", [
    ("no dataset folder", "no 'WBC Classification Dataset' folder"),
    ("no class folders", "expected a folder per class"),
    ("only copies", "no original images"),
    ("same image two classes", "the same image as"),
])
def test_wbc_refuses_a_wrong_clone_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, expected: str
) -> None:
    clone = wbc_clone(tmp_path / "clone", {"EOSINOPHIL": 10, "NEUTROPHIL": 10}, copies=1)
    folder = clone / wbc_fields.FOLDER
    if damage == "no dataset folder":
        shutil.rmtree(folder)
        (clone / "other").mkdir()
    elif damage == "no class folders":
        shutil.rmtree(folder / "NEUTROPHIL")
    elif damage == "only copies":
        for p in (folder / "NEUTROPHIL").glob("*.jpg"):
            if "_original_" not in p.name:
                p.unlink()
    else:
        shutil.copy(folder / "EOSINOPHIL" / "1.jpg", folder / "NEUTROPHIL" / "999.jpg")
    out = tmp_path / "wbc.npz"
    assert build_wbc(clone, out) == 2
    assert_one_error_line(capsys.readouterr().err, expected)
    assert not out.exists()
