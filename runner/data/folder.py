"""Images in class folders: ``root/<class>/*.png`` or, pre-split, ``root/{train,val,test}/<class>/*.png``.

File types: png, jpg, jpeg, bmp, tif, tiff (case-insensitive); other files and hidden entries are
ignored. Class names are the folder names, sorted (or the ``class_names`` argument, which picks and
orders a subset). If any image is colour every image is read as RGB (RGBA loses its alpha, gray is
repeated), else as one gray channel; multi-channel TIFFs (e.g. phase / OPD stacks, read by
tifffile) keep their channels, which every image of the folder must then share. Values are scaled
as ``runner.data.images`` defines (8-bit / 255, 16-bit / 65535, float as stored).

Without split folders the images of every class are split with a seeded shuffle: ``val`` and
``test`` are fractions of each class (default 0.1 and 0.2, like pbc28.npz) or total counts (ints,
shared out over classes in proportion); ``train`` gets the rest, capped by the ``train`` argument
(see ``load_dataset``). Each class needs an image in every split. The split has its own seeded
stream, so capping ``train`` never moves an image into or out of val/test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search_space.errors import DataError

from .dataset import SPLITS, CellDataset, Size, allocate, cell_dataset, resize, subsampled_splits
from .images import image_info, modality_for, read_image

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DEFAULT_FRACTIONS: dict[str, float] = {"val": 0.1, "test": 0.2}


@dataclass(frozen=True)
class _Entry:
    path: Path
    label: int
    channels: int  # alpha not counted
    size: tuple[int, int]  # (width, height)


def load_folder(
    root: str | Path,
    *,
    image_size: int | None,
    sizes: dict[str, Size],
    class_names: list[str] | None,
    seed: int,
) -> CellDataset:
    """Read, split (when not pre-split), subsample, resize and normalise a folder dataset."""
    root = Path(root)
    names, entries, presplit = _scan(root, class_names)
    channels = _channels(entries)
    size = _output_size(root, entries, image_size)
    if not presplit:
        entries = _split(root, names, entries["all"], sizes, seed)
        sizes = {**sizes, "val": None, "test": None}  # they set the split; only train remains a cap
    labels = {split: np.array([e.label for e in entries[split]], dtype=np.int64) for split in SPLITS}
    splits = subsampled_splits(
        labels, names, sizes, seed, str(root), lambda split: f"; give {split} a larger value or add images",
        lambda split, keep: torch.stack([_read(entries[split][j].path, channels, size) for j in keep.tolist()]),
    )
    return cell_dataset(splits, class_names=names, modality=modality_for(channels), source=str(root))


def describe_folder(root: str | Path, *, image_size: int | None, class_names: list[str] | None) -> tuple[int, int, int]:
    """(in_channels, num_classes, image_size) from the folder names and image headers, pixels unread."""
    root = Path(root)
    names, entries, _ = _scan(root, class_names)
    return _channels(entries), len(names), _output_size(root, entries, image_size)


def _scan(root: Path, class_names: list[str] | None) -> tuple[list[str], dict[str, list[_Entry]], bool]:
    """Class names and the images found: per split when pre-split, else all under the key 'all'."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder" + (" (it is a file; use source='npz')" if root.is_file() else ""))
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    if split_dirs:
        absent = [s for s in SPLITS if s not in split_dirs]
        if absent:
            have, need = "/, ".join(split_dirs), "/, ".join(absent)
            raise DataError(f"{root}: has {have}/ but no {need}/; give all three split folders or none")
        names = list(class_names or _class_dirs(root / "train"))
        for s in ("val", "test"):
            extra = sorted(set(_class_dirs(root / s)) - set(names)) if class_names is None else []
            if extra:
                raise DataError(f"{root / s}: class folder(s) {', '.join(extra)} are not in {root / 'train'}")
        return names, {s: _list(root / s, names, must_exist=s == "train") for s in SPLITS}, True
    names = list(class_names or _class_dirs(root))
    return names, {"all": _list(root, names, must_exist=True)}, False


def _class_dirs(where: Path) -> list[str]:
    names = sorted(p.name for p in where.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{where}: no class folders; expected {where}/<class>/<image>.png")
    return names


def _list(where: Path, names: list[str], *, must_exist: bool) -> list[_Entry]:
    """Every image under where/<class>/, with its header read (mode and size, not pixels)."""
    entries = []
    for label, name in enumerate(names):
        folder = where / name
        if not folder.is_dir():
            if must_exist:
                found = ", ".join(_class_dirs(where))
                raise DataError(f"{folder}: no such class folder (class folders found: {found})")
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise DataError(f"{folder}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for file in files:
            info = image_info(file)
            entries.append(_Entry(file, label, info.channels, info.size))
    return entries


def _split(root: Path, names: list[str], entries: list[_Entry], sizes: dict[str, Size], seed: int) -> dict[str, list[_Entry]]:
    """Seeded per-class split of an unsplit folder into train/val/test (see the module docstring)."""
    labels = np.array([e.label for e in entries], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names))
    take = {}
    for s in ("val", "test"):
        value = sizes[s] or DEFAULT_FRACTIONS[s]
        if isinstance(value, int) and value < len(names):
            raise DataError(f"{root}: {s}={value} cannot give each of the {len(names)} classes an image;"
                            f" use at least {len(names)} or a fraction")
        take[s] = _split_counts(value, counts)
    rest = counts - take["val"] - take["test"]
    for c, name in enumerate(names):
        if min(rest[c], take["val"][c], take["test"][c]) < 1:
            raise DataError(
                f"{root / name}: {counts[c]} image(s) is too few to split into train, val and test"
                f" (would get {rest[c]}, {take['val'][c]}, {take['test'][c]}); add images or change val/test"
            )
    rng = np.random.default_rng([seed, len(SPLITS)])  # its own stream: caps do not move the split
    chosen: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in range(len(names)):
        order = rng.permutation(np.flatnonzero(labels == c)).tolist()
        v, t = int(take["val"][c]), int(take["test"][c])
        chosen["val"] += order[:v]
        chosen["test"] += order[v : v + t]
        chosen["train"] += order[v + t :]
    return {s: [entries[i] for i in sorted(chosen[s])] for s in SPLITS}


def _split_counts(value: int | float, counts: np.ndarray) -> np.ndarray:
    """Images per class for val or test: a fraction of each class (at least 1), or a total count."""
    if isinstance(value, float):
        return np.maximum(1, np.round(value * counts)).astype(np.int64)
    return allocate(int(value), counts)


def _channels(entries: dict[str, list[_Entry]]) -> int:
    """1 when every image is gray, 3 when some are colour (gray ones repeated), else the one channel
    count all images share."""
    found: dict[int, Path] = {}
    for split in entries.values():
        for e in split:
            found.setdefault(e.channels, e.path)
    if set(found) <= {1}:
        return 1
    if set(found) <= {1, 3}:
        return 3
    if len(found) > 1:
        (a, pa), (b, pb) = sorted(found.items())[:2]
        raise DataError(f"{pa.parent.parent}: images differ in channels ({pa.name} has {a}, {pb.name} has {b}); "
                        "a folder of multi-channel images must share one channel count")
    return next(iter(found))


def _output_size(root: Path, entries: dict[str, list[_Entry]], image_size: int | None) -> int:
    """The asked size, else the one size all images share, which must be square."""
    if image_size:
        return image_size
    sizes = {e.size: e.path for split in entries.values() for e in split}
    if len(sizes) > 1:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise DataError(
            f"{root}: images differ in size ({pa.name} is {a[0]}x{a[1]}, {pb.name} is {b[0]}x{b[1]});"
            " pass image_size to resize them all"
        )
    (w, h), path = next(iter(sizes.items()))
    if w != h:
        raise DataError(f"{root}: images are {w}x{h}, not square ({path.name}); pass image_size to resize them")
    return w


def _read(path: Path, channels: int, size: int) -> torch.Tensor:
    """One image as (C, size, size) float32 in the documented scale (``runner.data.images``)."""
    array, _ = read_image(path)
    if array.shape[-1] == 1 and channels == 3:
        array = np.repeat(array, 3, axis=-1)  # gray in a colour folder: R = G = B
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    return resize(x[None], size)[0]
