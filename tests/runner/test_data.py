"""Loaders for real images (npz, folder), the shared split/normalisation rules, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cellsparse.errors import UserError
from runner.data import BLOODMNIST_CLASSES, CellDataset, describe_dataset, load_dataset
from runner.data.dataset import channel_statistics, normalise
from search_space.errors import DataError

PBC28 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "pbc28.npz"


def _images(n: int, size: int, channels: int | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if channels is None else (n, size, size, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_npz(path: Path, *, channels: int | None = 3, size: int = 8, counts=(12, 6, 6), classes: int = 3,
              column_labels: bool = True, **extra: np.ndarray) -> Path:
    """A small MedMNIST-layout file: labels cycle through the classes, (N, 1) like MedMNIST by default."""
    arrays = {}
    for i, (split, n) in enumerate(zip(("train", "val", "test"), counts, strict=True)):
        arrays[f"{split}_images"] = _images(n, size, channels, seed=i)
        labels = (np.arange(n) % classes).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if column_labels else labels
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def write_folder(root: Path, layout: dict[str, int], *, size: int = 8, mode: str = "RGB", seed: int = 0) -> Path:
    """root/<class>/<i>.png for {class: count}; returns root."""
    rng = np.random.default_rng(seed)
    for name, count in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(root / name / f"{i}.png")
    return root


def raw(data: CellDataset, split: str) -> torch.Tensor:
    """Undo the normalisation, back to the loader's raw scale."""
    x = data.images(split)
    return x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)


def test_uint8_storage_gives_the_float_copy_numbers_bit_for_bit() -> None:
    """Keeping 8-bit images as uint8 changes memory, not numbers: the same model input as the float copy
    the loaders used to hold, and the same statistics (exact integer sums against float32 std_mean)."""
    stored = torch.randint(0, 256, (70, 3, 9, 9), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    as_float = stored.float().mul_(1 / 255)
    std8, mean8 = channel_statistics(stored)
    std32, mean32 = channel_statistics(as_float)
    torch.testing.assert_close(mean8, mean32, atol=1e-6, rtol=0)
    torch.testing.assert_close(std8, std32, atol=1e-6, rtol=0)
    mean, std = tuple(mean8.tolist()), tuple(std8.tolist())
    assert torch.equal(normalise(stored, mean, std), normalise(as_float, mean, std))
    assert normalise(stored[0], mean, std).shape == (3, 9, 9)  # one image: channels at dim -3


# -- npz -------------------------------------------------------------------------------------


def test_npz_hwc_with_column_labels(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "cells.npz")
    data = load_dataset(source="npz", path=path)
    stored = np.load(path)
    assert data.train_x.shape == (12, 3, 8, 8) and data.val_x.shape == (6, 3, 8, 8) and data.test_x.shape == (6, 3, 8, 8)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64  # 8-bit, kept as stored
    assert data.images("train").dtype == torch.float32 and data.nbytes == 24 * 3 * 8 * 8 + 24 * 8
    assert data.train_y.tolist() == [0, 1, 2] * 4
    assert (data.in_channels, data.num_classes, data.image_size) == (3, 3, 8)
    assert data.class_names == ["class_0", "class_1", "class_2"] and data.modality == "rgb"
    assert data.source == str(path)
    expected = torch.from_numpy(stored["val_images"]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(raw(data, "val"), expected, atol=1e-5, rtol=0)


def test_stats_come_from_the_train_split_only(tmp_path: Path) -> None:
    train = np.full((4, 8, 8, 3), 50, np.uint8)
    train[:2] = 150  # raw train values 50/255 and 150/255: mean 100/255, std 50/255
    val = np.full((3, 8, 8, 3), 250, np.uint8)  # far from train: must not move the stats
    labels4, labels3 = np.array([0, 1, 0, 1]), np.array([0, 1, 0])
    path = tmp_path / "s.npz"
    np.savez(path, train_images=train, train_labels=labels4, val_images=val, val_labels=labels3,
             test_images=val, test_labels=labels3)
    data = load_dataset(source="npz", path=path)
    assert data.mean == pytest.approx((100 / 255,) * 3, abs=1e-6)
    assert data.std == pytest.approx((50 / 255,) * 3, abs=1e-6)
    torch.testing.assert_close(data.images("train").mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.images("val"), torch.full((3, 3, 8, 8), 3.0), atol=1e-4, rtol=0)  # (250-100)/50


def test_npz_hw_gray_and_flat_labels(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "gray.npz", channels=None, column_labels=False)
    data = load_dataset(source="npz", path=path)
    assert data.train_x.shape == (12, 1, 8, 8) and data.modality == "gray"
    assert describe_dataset(source="npz", path=path) == (1, 3, 8)


def test_npz_rgba_drops_alpha(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "rgba.npz", channels=4)
    assert load_dataset(source="npz", path=path).in_channels == 3
    assert describe_dataset(source="npz", path=path)[0] == 3


def test_npz_resize(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "r.npz", size=8)
    data = load_dataset(source="npz", path=path, image_size=16)
    assert data.train_x.shape[-2:] == (16, 16)
    assert describe_dataset(source="npz", path=path, image_size=16) == (3, 3, 16)
    # A constant image stays constant through the antialiased bilinear resize.
    path2 = tmp_path / "flat.npz"
    flat = np.full((3, 12, 12, 3), 80, np.uint8)
    y = np.arange(3)
    np.savez(path2, train_images=flat, train_labels=y, val_images=flat, val_labels=y, test_images=flat, test_labels=y)
    small = load_dataset(source="npz", path=path2, image_size=5)
    torch.testing.assert_close(raw(small, "train"), torch.full((3, 3, 5, 5), 80 / 255), atol=1e-5, rtol=0)


def test_npz_class_names_from_key_then_argument(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "named.npz", class_names=np.array(["a", "b", "c"]))
    assert load_dataset(source="npz", path=path).class_names == ["a", "b", "c"]
    assert load_dataset(source="npz", path=path, class_names=["x", "y", "z"]).class_names == ["x", "y", "z"]


def test_known_file_names_get_bloodmnist_names_only_with_eight_classes(tmp_path: Path) -> None:
    eight = write_npz(tmp_path / "pbc_small.npz", classes=8, counts=(16, 8, 8))
    assert load_dataset(source="npz", path=eight).class_names == list(BLOODMNIST_CLASSES)
    three = write_npz(tmp_path / "pbc_three.npz", classes=3)
    assert load_dataset(source="npz", path=three).class_names == ["class_0", "class_1", "class_2"]
    other = write_npz(tmp_path / "mine.npz", classes=8, counts=(16, 8, 8))
    assert load_dataset(source="npz", path=other).class_names[0] == "class_0"


def test_npz_caps_are_seeded_and_stratified(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "big.npz", counts=(90, 30, 30))
    data = load_dataset(source="npz", path=path, train=9, val=0.5, test=None, seed=3)
    assert len(data.train_y) == 9 and len(data.val_y) == 15 and len(data.test_y) == 30
    assert torch.bincount(data.train_y).tolist() == [3, 3, 3]
    again = load_dataset(source="npz", path=path, train=9, val=0.5, seed=3)
    other = load_dataset(source="npz", path=path, train=9, val=0.5, seed=4)
    assert torch.equal(data.train_x, again.train_x)
    assert not torch.equal(data.train_x, other.train_x)
    assert load_dataset(source="npz", path=path, train=0).train_x.shape[0] == 90  # 0 = all


# -- folder ----------------------------------------------------------------------------------


def test_folder_without_split_folders_is_split_per_class(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "cells", {"b_cell": 10, "a_cell": 10, "c_cell": 20})
    data = load_dataset(source="folder", path=root)
    assert data.class_names == ["a_cell", "b_cell", "c_cell"]  # sorted folder names
    assert torch.bincount(data.val_y).tolist() == [1, 1, 2]  # 10% of each class
    assert torch.bincount(data.test_y).tolist() == [2, 2, 4]  # 20%
    assert torch.bincount(data.train_y).tolist() == [7, 7, 14]
    assert data.train_x.shape[1:] == (3, 8, 8) and data.modality == "rgb"
    same = load_dataset(source="folder", path=root)
    assert torch.equal(data.val_x, same.val_x)
    # Capping train must not move images between splits (it does change the train statistics).
    capped = load_dataset(source="folder", path=root, train=6)
    torch.testing.assert_close(raw(capped, "val"), raw(data, "val"), atol=1e-5, rtol=0)
    assert len(capped.train_y) == 6 and capped.mean != data.mean
    assert describe_dataset(source="folder", path=root) == (3, 3, 8)


def test_folder_split_counts_and_class_subset(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "cells", {"x": 10, "y": 10, "z": 10})
    data = load_dataset(source="folder", path=root, val=3, test=6, class_names=["z", "x"])
    assert data.class_names == ["z", "x"]
    assert torch.bincount(data.val_y).tolist() == [2, 1] and torch.bincount(data.test_y).tolist() == [3, 3]
    assert len(data.train_y) == 11
    with pytest.raises(DataError, match=r"cells: val=1 cannot give each of the 2 classes an image"):
        load_dataset(source="folder", path=root, val=1, class_names=["z", "x"])


def test_folder_with_split_folders(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        write_folder(tmp_path / "ds" / split, {"cat": n, "dog": n}, mode="L", seed=len(split))
    data = load_dataset(source="folder", path=tmp_path / "ds")
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (8, 4, 6)
    assert data.in_channels == 1 and data.modality == "gray"
    assert describe_dataset(source="folder", path=tmp_path / "ds") == (1, 2, 8)


def test_folder_mixed_modes_become_rgb_and_sizes_need_image_size(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mix", {"a": 3}, mode="L")
    write_folder(root, {"b": 3}, mode="RGBA", size=12)
    with pytest.raises(DataError, match=r"differ in size.*image_size"):
        load_dataset(source="folder", path=root, val=2, test=2)
    data = load_dataset(source="folder", path=root, image_size=10, val=2, test=2)
    assert data.train_x.shape[1:] == (3, 10, 10)
    gray = raw(data, "train")[data.train_y == 0]
    torch.testing.assert_close(gray[:, 0], gray[:, 2])  # gray images repeated over R, G, B


# -- bad input -------------------------------------------------------------------------------


def _npz_with(tmp_path: Path, name: str = "bad.npz", **overrides: np.ndarray) -> Path:
    base = dict(np.load(write_npz(tmp_path / "base.npz")))
    base.update(overrides)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"val_labels": None}, r"missing key\(s\) val_labels; the file has: .*train_images"),
        ({"val_labels": np.zeros((5, 1), np.uint8)}, r"'val_images' has 6 images but 'val_labels' has 5"),
        ({"train_labels": np.full((12, 1), -1, np.int8)}, r"negative label -1"),
        ({"class_names": np.array(["a", "b"])}, r"label 2 but there are only 2 class names"),
        ({"test_labels": np.zeros(6, np.float32)}, r"integer class indices, got dtype float32"),
        ({"train_labels": np.zeros((12, 2), np.uint8)}, r"shape \(N,\) or \(N, 1\)"),
        ({"train_images": np.zeros((12, 3, 8, 8), np.uint8)}, r"channels-first"),
        ({"test_images": np.zeros((6, 9, 9, 3), np.uint8)}, r"all splits must share one image shape"),
        ({"val_labels": np.zeros((6, 1), np.uint8)}, r"val split has no images of class\(es\) class_1, class_2"),
        ({"train_images": np.zeros((12, 8, 8, 3), np.int32)}, r"dtype int32"),
    ],
)
def test_bad_npz_content(tmp_path: Path, overrides: dict, match: str) -> None:
    path = _npz_with(tmp_path, **overrides)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(source="npz", path=path)
    assert str(path) in str(info.value)


def test_object_arrays_are_refused_without_advising_pickle(tmp_path: Path) -> None:
    """numpy's own message suggests allow_pickle=True (which would let the file run code): never shown."""
    labels = np.empty(12, dtype=object)
    labels[:] = [0, 1, 2] * 4
    path = _npz_with(tmp_path, train_labels=labels)
    for read in (load_dataset, describe_dataset):
        with pytest.raises(DataError, match=r"'train_labels' cannot be read \(it holds Python objects") as info:
            read(source="npz", path=path)
        assert "allow_pickle" not in str(info.value)
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, labels)
    with pytest.raises(DataError, match="never unpickled") as info:
        load_dataset(source="npz", path=single)
    assert "allow_pickle" not in str(info.value)


def test_bad_npz_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.npz: no such file"):
        load_dataset(source="npz", path=tmp_path / "missing.npz")
    with pytest.raises(DataError, match=r"it is a folder"):
        load_dataset(source="npz", path=tmp_path)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    for read in (load_dataset, describe_dataset):  # numpy takes it for a pickle: no talk of object arrays
        with pytest.raises(DataError, match=r"junk\.npz: not an \.npz archive \(not a zip file\)") as info:
            read(source="npz", path=junk)
        assert "Python objects" not in str(info.value)


def test_cap_too_small_for_the_classes(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "c.npz")
    with pytest.raises(DataError, match=r"c\.npz: the val split has no images of class\(es\) class_2.*at least 3"):
        load_dataset(source="npz", path=path, val=2)


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: no such folder"):
        load_dataset(source="folder", path=tmp_path / "nowhere")
    empty_root = tmp_path / "noclasses"
    empty_root.mkdir()
    with pytest.raises(DataError, match=r"noclasses: no class folders"):
        load_dataset(source="folder", path=empty_root)

    root = write_folder(tmp_path / "ds", {"a": 5, "b": 5})
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"ds/c: class folder holds no images"):
        load_dataset(source="folder", path=root)
    with pytest.raises(DataError, match=r"ds/c: class folder holds no images"):
        describe_dataset(source="folder", path=root)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "ds", {"a": 5, "b": 5})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"ds/b/broken\.png: cannot read image"):
        load_dataset(source="folder", path=root)


def test_too_few_images_to_split_a_class(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "ds", {"a": 10, "b": 2})
    with pytest.raises(DataError, match=r"ds/b: 2 image\(s\) is too few to split into train, val and test"):
        load_dataset(source="folder", path=root)


def test_split_folders_must_be_complete_and_consistent(tmp_path: Path) -> None:
    write_folder(tmp_path / "ds" / "train", {"a": 2, "b": 2})
    write_folder(tmp_path / "ds" / "val", {"a": 1, "b": 1})
    with pytest.raises(DataError, match=r"ds: has train/, val/ but no test/"):
        load_dataset(source="folder", path=tmp_path / "ds")
    write_folder(tmp_path / "ds" / "test", {"a": 1})
    with pytest.raises(DataError, match=r"ds: the test split has no images of class\(es\) b"):
        load_dataset(source="folder", path=tmp_path / "ds")
    write_folder(tmp_path / "ds" / "test", {"b": 1, "extra": 1})
    with pytest.raises(DataError, match=r"ds/test: class folder\(s\) extra are not in"):
        load_dataset(source="folder", path=tmp_path / "ds")


def test_unknown_class_folder(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "ds", {"a": 5, "b": 5})
    with pytest.raises(DataError, match=r"ds/zz: no such class folder \(class folders found: a, b\)"):
        load_dataset(source="folder", path=root, class_names=["a", "zz"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "hdf5"}, r"unknown data source 'hdf5'; choose one of synthetic, npz, folder"),
        ({"source": "synthetic", "modality": "fluorescence"}, r"unknown modality 'fluorescence'"),
        ({"source": "npz"}, r"source 'npz' needs a path"),
        ({"source": "synthetic", "difficulty": 1.5}, r"difficulty must be a number in \[0, 1\]"),
        ({"source": "synthetic", "train": 0.5}, r"train must be an image count"),
        ({"source": "synthetic", "class_names": ["lymphocyte", "platelet"]}, r"unknown synthetic class\(es\) 'platelet'"),
        ({"source": "synthetic", "class_names": ["lymphocyte"]}, r"at least two different classes"),
        ({"source": "synthetic", "image_size": 2}, r"image_size must be an int >= 4"),
        ({"source": "synthetic", "seed": -1}, r"seed must be a non-negative int"),
        ({"source": "npz", "path": "x.npz", "val": -3}, r"val must be a count >= 0"),
        ({"source": "npz", "path": "x.npz", "test": 1.5}, r"test as a fraction must lie in \(0, 1\]"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    for call in (load_dataset, describe_dataset):
        with pytest.raises(DataError, match=match):
            call(**kwargs)


def test_real_data_modality_rules(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "m.npz")
    assert load_dataset(source="npz", path=path, modality="rgb").modality == "rgb"
    with pytest.raises(DataError, match=r"m\.npz: modality 'opd' exists only as synthetic data"):
        load_dataset(source="npz", path=path, modality="opd")
    with pytest.raises(DataError, match=r"m\.npz: modality 'gray' was asked for but the images are rgb"):
        describe_dataset(source="npz", path=path, modality="gray")


def test_data_error_is_a_user_error() -> None:
    assert issubclass(DataError, UserError)


# -- the real file ---------------------------------------------------------------------------


@pytest.mark.skipif(not PBC28.is_file(), reason="pbc28.npz is not present (../shared/data/)")
def test_pbc28_loads_with_bloodmnist_names() -> None:
    data = load_dataset(source="npz", path=PBC28)
    assert data.train_x.shape == (11966, 3, 28, 28)
    assert data.val_x.shape == (1708, 3, 28, 28) and data.test_x.shape == (3418, 3, 28, 28)
    assert data.class_names == list(BLOODMNIST_CLASSES) and data.num_classes == 8
    assert sorted(torch.unique(data.train_y).tolist()) == list(range(8))
    assert all(0.3 < m < 0.95 for m in data.mean) and all(0.02 < s < 0.4 for s in data.std)
    assert describe_dataset(source="npz", path=PBC28) == (3, 8, 28)
