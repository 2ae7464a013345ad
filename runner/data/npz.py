"""Images in a MedMNIST-layout ``.npz``: ``{train,val,test}_images`` and ``{train,val,test}_labels``.

Images are (N, H, W) or (N, H, W, C) with C in {1, 3, 4} (RGBA loses its alpha); uint8 is scaled
by 1/255, uint16 by 1/65535, float kept as stored. uint8 images at their stored size stay uint8 in
memory (scaled a batch at a time, see ``CellDataset``); resized or other images are held as float32.
Labels are integers, (N,) or (N, 1).

Class names, first found wins: the ``class_names`` argument; a ``class_names`` array in the file;
:data:`KNOWN_CLASS_NAMES` when the file name starts with one of its keys and the label count
matches (this is how ``pbc28.npz`` and MedMNIST's ``bloodmnist.npz`` get BloodMNIST's names);
otherwise ``class_0``, ``class_1``, ... up to the largest label.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from search_space.errors import DataError

from .dataset import SPLITS, CellDataset, Size, cell_dataset, resize, subsampled_splits
from .images import VALUE_SCALE

BLOODMNIST_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature granulocyte",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
# File-name prefix (lower case) -> class names in label order, for files that carry no names.
KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {"bloodmnist": BLOODMNIST_CLASSES, "pbc": BLOODMNIST_CLASSES}

_SCALE = VALUE_SCALE  # the one definition of value scaling (runner.data.images)
_RESIZE_CHUNK = 256  # images converted to float and resized at once


def load_npz(
    path: str | Path,
    *,
    image_size: int | None,
    sizes: dict[str, Size],
    class_names: list[str] | None,
    seed: int,
) -> CellDataset:
    """Read, check, subsample (seeded, class-stratified), resize and normalise an npz dataset."""
    path = Path(path)
    with _open(path) as archive:
        names, labels, shapes = _checked_header(path, archive, class_names)
        size = _output_size(path, shapes["train"], image_size)

        def read(split: str, keep: np.ndarray) -> torch.Tensor:
            images = _array(path, archive, f"{split}_images")
            images = images[keep] if len(keep) < len(images) else images
            if images.dtype == np.uint8 and images.shape[1:3] == (size, size):
                return _channels_first(images)  # kept 8-bit until a batch needs it (CellDataset.normalise)
            # a chunk at a time: only the resized float copy is ever whole, never the stored size's
            return torch.cat([resize(_to_float(path, images[i : i + _RESIZE_CHUNK]), size)
                              for i in range(0, max(len(images), 1), _RESIZE_CHUNK)])

        splits = subsampled_splits(labels, names, sizes, seed, str(path),
                                   lambda split: _hint(sizes[split], len(names), split), read)
    modality = "rgb" if splits["train"][0].shape[1] == 3 else "gray"
    return cell_dataset(splits, class_names=names, modality=modality, source=str(path))


def describe_npz(path: str | Path, *, image_size: int | None, class_names: list[str] | None) -> tuple[int, int, int]:
    """(in_channels, num_classes, image_size) from the array headers and the labels, images unread."""
    path = Path(path)
    with _open(path) as archive:
        names, _, shapes = _checked_header(path, archive, class_names)
    channels = shapes["train"][3]
    return (3 if channels == 4 else channels), len(names), _output_size(path, shapes["train"], image_size)


def _checked_header(
    path: Path, archive: np.lib.npyio.NpzFile, class_names: list[str] | None
) -> tuple[list[str], dict[str, np.ndarray], dict[str, tuple[int, int, int, int]]]:
    """(class names, labels by split, (N, H, W, C) by split), checked; what loading and describing share."""
    names = _class_names(path, archive, class_names)
    labels = {s: _labels(path, archive, s, len(names) if names else None) for s in SPLITS}
    shapes = {s: _image_shape(path, archive, s) for s in SPLITS}
    _check_shapes(path, shapes, labels)
    return names or _default_names(path, labels), labels, shapes


ZIP_MAGIC = b"PK\x03\x04"  # an .npz archive is a zip file
NPY_MAGIC = b"\x93NUMPY"  # a single .npy array


def check_numpy_file(path: Path) -> None:
    """DataError unless ``path`` starts as an .npz archive (a zip file) or an .npy array does. numpy
    takes any other file for a pickle, and its refusal would name an object array that is not there."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(NPY_MAGIC))
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not head.startswith(ZIP_MAGIC) and head != NPY_MAGIC:
        raise DataError(f"{path}: not an .npz archive (not a zip file); save the arrays with numpy.savez")


def load_error(err: BaseException) -> str:
    """Why numpy could not read an array, in words for the user: numpy's own message for an object
    array suggests allow_pickle=True, which would let the file run code; never pass that on."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "allow_pickle" in text or "pickle" in text.lower():
        return "it holds Python objects (an object array), which are never unpickled here; save the arrays as numbers"
    return text


def _array(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: '{key}' cannot be read ({load_error(err)})") from None


def _open(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a folder; use source='folder')" if path.is_dir() else ""))
    check_numpy_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({load_error(err)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an .npz archive with {', '.join(_required())}")
    missing = [k for k in _required() if k not in archive.files]
    if missing:
        archive.close()
        raise DataError(
            f"{path}: missing key(s) {', '.join(missing)}; the file has: {', '.join(archive.files) or 'nothing'}"
            f" (expected MedMNIST layout: {', '.join(_required())})"
        )
    return archive


def _required() -> list[str]:
    return [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]


def _class_names(path: Path, archive: np.lib.npyio.NpzFile, given: list[str] | None) -> list[str] | None:
    if given is not None:
        return list(given)
    if "class_names" in archive.files:
        names = _array(path, archive, "class_names")
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: 'class_names' must be a 1-D array of strings, got {names.dtype} {names.shape}")
        return [str(n) for n in names]
    return None


def _default_names(path: Path, labels: dict[str, np.ndarray]) -> list[str]:
    count = int(max(y.max(initial=-1) for y in labels.values())) + 1
    stem = path.name.lower()
    for prefix, names in KNOWN_CLASS_NAMES.items():
        if stem.startswith(prefix) and len(names) == count:
            return list(names)
    return [f"class_{i}" for i in range(count)]


def _labels(path: Path, archive: np.lib.npyio.NpzFile, split: str, num_classes: int | None) -> np.ndarray:
    key = f"{split}_labels"
    y = _array(path, archive, key)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: '{key}' must have shape (N,) or (N, 1), got {y.shape} (multi-label is not supported)")
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: '{key}' must hold integer class indices, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: '{key}' has negative label {int(y.min())}; labels must be 0..num_classes-1")
    if num_classes is not None and len(y) and y.max() >= num_classes:
        raise DataError(
            f"{path}: '{key}' has label {int(y.max())} but there are only {num_classes} class names"
            f" (labels must be 0..{num_classes - 1})"
        )
    return y.astype(np.int64)


def _image_shape(path: Path, archive: np.lib.npyio.NpzFile, split: str) -> tuple[int, int, int, int]:
    """(N, H, W, C) of one split's images, read from the .npy header inside the zip."""
    key = f"{split}_images"
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with archive.zip.open(f"{key}.npy") as member:
        reader = readers.get(np.lib.format.read_magic(member))
        if reader is not None:
            shape, _, dtype = reader(member)
    if reader is None:  # a newer .npy version: read the array itself
        array = _array(path, archive, key)
        shape, dtype = array.shape, array.dtype
    if dtype not in _SCALE and dtype.kind not in "fb":
        raise DataError(f"{path}: '{key}' has dtype {dtype}; expected uint8, uint16, bool or float images")
    if len(shape) == 3:
        return (*shape, 1)
    if len(shape) == 4 and shape[3] in (1, 3, 4):
        return shape
    raise DataError(
        f"{path}: '{key}' has shape {shape}; expected (N, H, W) or (N, H, W, C) with C in 1, 3, 4"
        + (" (it looks channels-first: transpose it to (N, H, W, C))" if len(shape) == 4 and shape[1] in (1, 3) else "")
    )


def _check_shapes(path: Path, shapes: dict[str, tuple[int, ...]], labels: dict[str, np.ndarray]) -> None:
    for split in SPLITS:
        if shapes[split][0] != len(labels[split]):
            raise DataError(
                f"{path}: '{split}_images' has {shapes[split][0]} images but '{split}_labels' has"
                f" {len(labels[split])} labels"
            )
        if shapes[split][1:] != shapes["train"][1:]:
            raise DataError(
                f"{path}: '{split}_images' are {shapes[split][1:]} (H, W, C) but 'train_images' are"
                f" {shapes['train'][1:]}; all splits must share one image shape"
            )
    if len(labels["train"]) == 0:
        raise DataError(f"{path}: 'train_images' is empty")


def _output_size(path: Path, shape: tuple[int, ...], image_size: int | None) -> int:
    """The asked size, else the stored one, which must then be square."""
    if image_size:
        return image_size
    if shape[1] != shape[2]:
        raise DataError(f"{path}: images are {shape[1]}x{shape[2]}, not square; pass image_size to resize them")
    return int(shape[1])


def _channels_first(images: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) array -> (N, C, H, W) tensor of the same dtype; RGBA -> RGB."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        x = x[..., None]
    return x[..., :3].permute(0, 3, 1, 2).contiguous()


def _to_float(path: Path, images: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) array -> (N, C, H, W) float32 in the documented scale; RGBA -> RGB."""
    x = _channels_first(images)  # reorder while still small (e.g. uint8)
    scale = _SCALE.get(images.dtype)
    x = x.to(torch.float32)
    if scale is not None:
        return x.mul_(scale)
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: the images contain NaN or infinite values")
    return x


def _hint(size: Size, num_classes: int, split: str) -> str:
    if size:
        return f" after taking {size!r} of them; give {split} a larger value (at least {num_classes})"
    return "; every split needs every class"
