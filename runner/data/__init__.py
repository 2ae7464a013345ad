"""Datasets: the embedded synthetic cells (the default) and loaders for real images.

Public API::

    data = load_dataset(source="synthetic")                     # 2000/500/500 brightfield 32x32
    data = load_dataset(source="npz", path="../shared/data/pbc28.npz")
    c, k, s = describe_dataset(source="folder", path="cells/")  # cheap: no pixels read
    x = augment_batch(x, generator)                             # random flips / 90-degree turns

Sources: ``synthetic`` (see :mod:`runner.data.synthetic`), ``npz`` (MedMNIST layout, see
:mod:`runner.data.npz`), ``folder`` (class folders, see :mod:`runner.data.folder`).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from search_space.errors import DataError

from . import fields, synthetic
from .augment import augment_batch
from .dataset import SPLITS, CellDataset, Size, cell_dataset, check_size
from .folder import IMAGE_SUFFIXES, describe_folder, load_folder
from .images import modality_for
from .npz import BLOODMNIST_CLASSES, KNOWN_CLASS_NAMES, describe_npz, load_npz
from .synthetic import MODALITY_CHANNELS, SYNTHETIC_CLASSES

__all__ = [
    "BLOODMNIST_CLASSES",
    "KNOWN_CLASS_NAMES",
    "MODALITY_CHANNELS",
    "SOURCES",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_DEFAULT_SIZES",
    "CellDataset",
    "augment_batch",
    "data_fingerprint",
    "describe_dataset",
    "load_dataset",
]

SOURCES: tuple[str, ...] = ("synthetic", "npz", "folder")
SYNTHETIC_DEFAULT_SIZES: dict[str, int] = {"train": 2000, "val": 500, "test": 500}
SYNTHETIC_DEFAULT_IMAGE_SIZE = 32
UINT8_ABOVE = 128  # synthetic brightfield cells larger than this are held as uint8 (fields always are)
_REAL_MODALITIES = ("brightfield", "rgb", "gray")  # what may be asked of real images (see load_dataset)


def load_dataset(
    *,
    source: str,
    path: str | Path | None = None,
    modality: str = "brightfield",
    image_size: int | None = None,
    train: Size = None,
    val: Size = None,
    test: Size = None,
    difficulty: float = 0.5,
    class_names: list[str] | None = None,
    seed: int = 0,
    layout: str = "cell",
    target_size: int | None = None,
    distractors: int | None = None,
    cue_scale: float | None = None,
) -> CellDataset:
    """Load or generate a dataset, with its train split's per-channel mean and std (see ``CellDataset``).

    ``source``: "synthetic" (generated; ``path`` unused), "npz" or "folder" (``path`` required).

    ``image_size``: output side in pixels; None = 32 for synthetic data, the stored size for real
    data (which must then be square and, for a folder, the same for every image).

    Split sizes ``train``/``val``/``test`` (None and 0 mean "the default"):

    - synthetic: image counts, default 2000/500/500; each split is its own seeded stream, so
      changing one size never changes another split's images.
    - real data: caps. None/0 = every image; an int = at most that many; a float in (0, 1] = that
      fraction. The pick is seeded and class-stratified (each class keeps at least one image).
      For a folder without train/val/test subfolders, ``val`` and ``test`` instead say how to split
      it (fraction of each class, default 0.1 and 0.2, or a total count) and ``train`` caps the rest.

    ``modality``: for synthetic data "brightfield" (3 channels), "opd" (1) or "event" (2). Real
    images are what they are: the dataset's modality is "rgb" or "gray" from the files; asking for
    "rgb" or "gray" checks that, the default "brightfield" accepts either, "opd"/"event" are refused.

    ``difficulty`` (synthetic only, in [0, 1]): how ambiguous and cluttered the cells are.
    ``layout`` (synthetic only): "cell" (:mod:`runner.data.synthetic`: one cell filling part of the frame)
    or "field" (:mod:`runner.data.fields`: a ``target_size``-px cell, default 32, among ``distractors``
    red cells in a 64-512 px frame, stored uint8). ``cue_scale``: texture width in pixels relative to
    the 32-px look (None: scaled with the frame for "cell", 1 for "field").
    ``class_names``: synthetic, a subset of :data:`SYNTHETIC_CLASSES` (in the order given); npz, the
    names of labels 0..K-1; folder, the class folders to use, in that order.
    ``seed``: the generator's or the subsampling's seed; the same arguments give identical tensors.

    Raises DataError, naming the file and the problem, for anything it cannot use.
    """
    sizes = _check_common(source, path, modality, image_size, {"train": train, "val": val, "test": test}, seed)
    if source == "synthetic":
        field = _check_layout(layout, modality, image_size, target_size, distractors, cue_scale)
        data = _synthetic(modality, image_size, sizes, difficulty, class_names, seed, field, cue_scale)
    else:
        loader: Callable[..., CellDataset] = {"npz": load_npz, "folder": load_folder}[source]
        data = loader(path, image_size=image_size, sizes=sizes, class_names=class_names, seed=seed)
        _check_real_modality(modality, data.modality, path)
    _check_usable(data, path if path is not None else "synthetic data")
    return data


def _check_usable(data: CellDataset, where: str | Path) -> None:
    """What every loader must hand over, whatever the source: two classes or more, every split
    non-empty, every class in train, finite values (a trial cannot learn or be scored otherwise)."""
    if data.num_classes < 2:
        raise DataError(f"{where}: a single class ({', '.join(data.class_names) or 'none'}); classifying needs at least two")
    for split in SPLITS:
        x, y = data.split(split)
        if len(x) == 0:
            raise DataError(f"{where}: the {split} split is empty")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{where}: the {split} images contain NaN or infinite values")
    missing = sorted(set(range(data.num_classes)) - set(data.train_y.unique().tolist()))
    if missing:
        names = ", ".join(data.class_names[c] for c in missing)
        raise DataError(f"{where}: the train split has no images of class(es) {names}")


def data_fingerprint(*, source: str, path: str | Path | None = None, **_: object) -> str | None:
    """A sha256 of the files a real dataset is read from (the .npz file; every image below a folder
    with its relative path), so a run can tell that its data changed. None for synthetic data, which
    its settings define. Takes ``loader_kwargs()`` as they are; raises DataError when unreadable."""
    if source == "synthetic" or path is None:
        return None
    root = Path(path)
    digest = hashlib.sha256()
    try:
        if source == "npz":
            files = [("", root)]  # the content, whatever the file is called now
        else:
            files = sorted(
                (p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
        for name, file in files:
            digest.update(name.encode("utf-8") + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    except OSError as err:
        raise DataError(f"{path}: cannot be read to fingerprint it ({err.strerror or err})") from None
    return "sha256:" + digest.hexdigest()


def describe_dataset(**settings: Any) -> tuple[int, int, int]:
    """(in_channels, num_classes, image_size) that ``load_dataset(**settings)`` gives (it takes
    exactly ``load_dataset``'s arguments), cheaply: synthetic data is not generated, npz images are
    not read (only array headers and the labels), folder images are not decoded (only listed and
    their headers read)."""
    bound = inspect.signature(load_dataset).bind(**settings)
    bound.apply_defaults()
    a = bound.arguments
    source, path, modality, size = a["source"], a["path"], a["modality"], a["image_size"]
    _check_common(source, path, modality, size, {split: a[split] for split in SPLITS}, a["seed"])
    if source == "synthetic":
        names = _synthetic_classes(a["class_names"])
        _check_difficulty(a["difficulty"])
        _check_layout(a["layout"], modality, size, a["target_size"], a["distractors"], a["cue_scale"])
        return MODALITY_CHANNELS[modality], len(names), size or _default_size(a["layout"])
    describe: Callable[..., tuple[int, int, int]] = {"npz": describe_npz, "folder": describe_folder}[source]
    channels, num_classes, size = describe(path, image_size=size, class_names=a["class_names"])
    _check_real_modality(modality, modality_for(channels), path)
    return channels, num_classes, size


def _check_common(
    source: str, path: str | Path | None, modality: str, image_size: int | None, sizes: dict[str, Size], seed: int
) -> dict[str, Size]:
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "synthetic":
        if modality not in MODALITY_CHANNELS:
            raise DataError(f"unknown modality {modality!r} for synthetic data; choose one of {', '.join(MODALITY_CHANNELS)}")
        for name, value in sizes.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise DataError(f"{name} must be an image count (int >= 0) for synthetic data, got {value!r}")
    else:
        if path is None:
            raise DataError(f"source {source!r} needs a path (to the {'.npz file' if source == 'npz' else 'folder'})")
        if modality not in _REAL_MODALITIES + tuple(MODALITY_CHANNELS):
            raise DataError(f"unknown modality {modality!r}; choose one of {', '.join(_REAL_MODALITIES)} for real images")
        for name, value in sizes.items():
            check_size(name, value)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4):
        raise DataError(f"image_size must be an int >= 4 (or None for the default), got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    return sizes


def _check_real_modality(asked: str, found: str, path: str | Path | None) -> None:
    if asked in MODALITY_CHANNELS and asked != "brightfield":
        raise DataError(f"{path}: modality {asked!r} exists only as synthetic data; real images are 'rgb' or 'gray'")
    if asked in ("rgb", "gray") and asked != found:
        raise DataError(f"{path}: modality {asked!r} was asked for but the images are {found}")


def _check_difficulty(difficulty: float) -> None:
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not 0 <= difficulty <= 1:
        raise DataError(f"difficulty must be a number in [0, 1], got {difficulty!r}")


def _synthetic_classes(class_names: list[str] | None) -> tuple[str, ...]:
    if class_names is None:
        return SYNTHETIC_CLASSES
    unknown = [c for c in class_names if c not in SYNTHETIC_CLASSES]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise DataError(f"unknown synthetic class(es) {names}; choose from {', '.join(SYNTHETIC_CLASSES)}")
    if len(set(class_names)) != len(class_names) or len(class_names) < 2:
        raise DataError(f"class_names must name at least two different classes, got {list(class_names)}")
    return tuple(class_names)


def _default_size(layout: str) -> int:
    return fields.DEFAULT_FIELD_SIZE if layout == "field" else SYNTHETIC_DEFAULT_IMAGE_SIZE


def _check_layout(layout: str, modality: str, image_size: int | None, target_size: int | None,
                  distractors: int | None, cue_scale: float | None) -> dict[str, Any] | None:
    """The field generator's settings for layout "field", None for "cell"; DataError for what cannot be drawn."""
    if layout not in ("cell", "field"):
        raise DataError(f"unknown layout {layout!r} for synthetic data; choose cell or field")
    if cue_scale is not None and (isinstance(cue_scale, bool) or not isinstance(cue_scale, (int, float))
                                  or not 0.25 <= cue_scale <= 8):
        raise DataError(f"cue_scale must be a number from 0.25 to 8 (or None), got {cue_scale!r}")
    if layout == "cell":
        if target_size is not None or distractors is not None:
            raise DataError("target_size and distractors are settings of layout 'field'")
        return None
    if modality != "brightfield":
        raise DataError(f"layout 'field' is rendered in brightfield only, got modality {modality!r}")
    size = image_size or _default_size(layout)
    if not fields.FIELD_MIN_SIZE <= size <= fields.FIELD_MAX_SIZE:
        raise DataError(f"layout 'field' needs image_size from {fields.FIELD_MIN_SIZE} to {fields.FIELD_MAX_SIZE}, got {size}")
    target = fields.DEFAULT_TARGET_SIZE if target_size is None else target_size
    if isinstance(target, bool) or not isinstance(target, int) or not 8 <= target <= size // 2:
        raise DataError(f"target_size must be an int from 8 to half the frame ({size // 2}), got {target_size!r}")
    if distractors is not None and (isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0):
        raise DataError(f"distractors must be a count (int >= 0) or None, got {distractors!r}")
    return {"target_size": target, "distractors": distractors,
            "cue_scale": fields.DEFAULT_CUE_SCALE if cue_scale is None else float(cue_scale)}


def _synthetic(
    modality: str, image_size: int | None, sizes: dict[str, Size], difficulty: float,
    class_names: list[str] | None, seed: int, field: dict[str, Any] | None, cue_scale: float | None,
) -> CellDataset:
    classes = _synthetic_classes(class_names)
    _check_difficulty(difficulty)
    size = image_size or _default_size("field" if field else "cell")
    splits = {}
    for split in SPLITS:
        n = int(sizes[split] or SYNTHETIC_DEFAULT_SIZES[split])
        if field is not None:
            batch = fields.generate_fields(n, image_size=size, difficulty=float(difficulty), seed=seed, split=split,
                                           classes=classes, **field)
        else:
            batch = synthetic.generate(n, modality=modality, image_size=size, difficulty=float(difficulty), seed=seed,
                                       split=split, classes=classes, cue_scale=cue_scale)
            if modality == "brightfield" and size > UINT8_ABOVE:  # light in [0, 1]: 8 bits, as a camera gives it
                batch.images = batch.images.mul_(255).round_().to(torch.uint8)
        splits[split] = (batch.images, batch.labels)
    what = (f"fields of {size}px, target {field['target_size']}px, cue scale {field['cue_scale']:g}" if field
            else f"{modality}, {size}px" + ("" if cue_scale is None else f", cue scale {cue_scale:g}"))
    source = f"synthetic {what}, difficulty {difficulty:g}, seed {seed}"
    return cell_dataset(splits, class_names=list(classes), modality=modality, source=source)
