"""``python -m runner.predict``: classify cell images with an exported model.

    python -m runner.predict runs/cells/export cells/ --out predictions.csv
    python -m runner.predict runs/cells/export a.png b.tif --format pt2
    python -m runner.predict runs/cells/export pbc28.npz --split test --batch-size 512

INPUT is any mix of image files (png, jpg, jpeg, bmp, tif, tiff), folders (searched recursively
for those, hidden entries skipped) and MedMNIST-layout ``.npz`` files (every ``*_images`` array,
or only ``<split>_images`` with ``--split``; when the matching ``*_labels`` are there, the CSV gets
a ``label`` column and the summary an accuracy).

Preprocessing is the training loaders' (``runner.data``), read from the export's model card:
values scaled as the loaders scale them (8-bit / 255, 16-bit / 65535, float as stored), resized to
the model's size with the same bilinear antialiased resize (non-square images are stretched, as
in training), then normalised with the card's per-channel mean and std.
Memory is bounded whatever the inputs: images are read a batch at a time and each file is resized as
soon as it is decoded; a file of more than ``runner.data.images.MAX_PIXELS`` pixels is refused (one
line naming it and the limit), and a frame of more than ``REDUCE_ABOVE`` pixels is reduced while it
is decoded (``runner.data.images``), so four 10000 x 10000 PNGs take well under 1 GB. Values that
overflow to infinity or NaN once resized and normalised (finite floats like 3e38) are refused.

Channel conversions, and why each is sound or refused:

=============================  ============================================================
model takes / input has        what happens
=============================  ============================================================
3 (RGB) / gray                 repeated to 3 channels: a gray image is an RGB one with R=G=B
                               (exactly what the folder loader does with gray files)
3 (RGB) / RGBA                 alpha dropped (as the loaders do)
1 (gray) / RGB whose channels  one channel taken: the image is gray, saved as colour; exact
are equal
1 (gray) / colour RGB          luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, PIL's "L"),
                               only for a model trained on gray light images (modality gray);
                               what a gray camera would have recorded, approximately
1 (opd phase) / colour         refused: colour is not optical path difference
1 (opd phase) / 8 or 16-bit    refused: phase models take radians as float values (float
                               TIFF or a float npz array); integer levels have no phase scale
2 (event ON/OFF) / anything    only 2-channel arrays in an npz, (N, H, W, 2), counts as stored;
but 2-channel arrays           images of 1, 3 or 4 channels are refused
C (multichannel, a folder of   TIFFs or arrays with the same C channels, scaled by dtype; other
C-channel TIFFs) / C channels  channel counts are refused
=============================  ============================================================

Output: a CSV (``input``, ``predicted``, ``probability``, ``top2``, ``top2_probability``, ``top3``,
``top3_probability``, and ``label`` where known: ``Prediction.frame()``) written whole at the end
(default ``EXPORT_DIR/predictions.csv``; an existing file there is replaced only when it is an earlier
predictions CSV, never an image, a model or anyone's table), and a summary: images per class, images
per second (end to end, and the model alone). Bad input (an unknown export directory, a missing or
unreadable model card, a corrupt model file, an unreadable image, an empty folder) prints one
``error: ...`` line and exits with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cellsparse.commands import EXIT_USER_ERROR, command, command_parser, print_error, run_command
from cellsparse.errors import UserError
from cellsparse.files import write_atomic
from runner.data.dataset import resize
from runner.data.images import VALUE_SCALING, read_image, scale_values
from runner.data.npz import KNOWN_CLASS_NAMES, check_numpy_file, load_error
from runner.engine.artefacts import InferenceFn, check_device, onnx_runner, pt2_runner
from runner.modelcard import find_export, read_card

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as PIL's convert("L")
DEFAULT_BATCH = 256
BATCH_PIXELS = DEFAULT_BATCH * 128 * 128  # the default batch holds at most this many pixels: 16 frames of 512 px


def default_batch(size: int) -> int:
    """Images per model call when none is asked for: ``DEFAULT_BATCH`` up to 128-px frames, fewer for
    larger ones, so one batch's float input (and the activations it makes) stays the size it is at
    128 px whatever the frame."""
    return max(1, min(DEFAULT_BATCH, BATCH_PIXELS // (size * size)))


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Item:
    """One image to classify: a file, or image ``index`` of array ``key`` in an npz."""

    path: Path
    key: str | None = None
    index: int | None = None
    label: str | None = None  # the true class name, when the npz has labels

    @property
    def name(self) -> str:
        if self.key == "":  # an image of an in-memory array (see ``array_items``)
            return f"{self.path}[{self.index}]"
        return str(self.path) if self.key is None else f"{self.path}:{self.key}[{self.index}]"


def _npz_items(path: Path, split: str | None, classes: Sequence[str]) -> list[Item]:
    check_numpy_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = [k for k in archive.files if k.endswith("_images")]
            if split is not None:
                keys = [k for k in keys if k == f"{split}_images"]
                if not keys:
                    found = ", ".join(k for k in archive.files if k.endswith("_images")) or "none"
                    raise UserError(f"{path}: no '{split}_images' array (image arrays: {found})")
            if not keys:
                raise UserError(f"{path}: no '*_images' array (keys: {', '.join(archive.files) or 'none'}); "
                                "expected the MedMNIST layout (train_images, val_images, test_images)")
            items = []
            for key in keys:
                shape = _npy_shape(archive, key)
                labels = _npz_labels(archive, key.removesuffix("_images") + "_labels", shape[0])
                names = None if labels is None else _label_names(path, archive, labels, classes)
                items += [Item(path, key, i, None if names is None else names[int(labels[i])]) for i in range(shape[0])]
            return items
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a readable .npz file ({load_error(err)})") from None


def _npy_shape(archive: Any, key: str) -> tuple[int, ...]:
    """An npz member's shape from its .npy header (pixels unread); newer .npy versions are read whole."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with archive.zip.open(f"{key}.npy") as member:
        reader = readers.get(np.lib.format.read_magic(member))
        if reader is not None:
            return tuple(reader(member)[0])
    return tuple(archive[key].shape)


def _npz_labels(archive: Any, key: str, n: int) -> np.ndarray | None:
    if key not in archive.files:
        return None
    labels = archive[key]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n or labels.dtype.kind not in "iu" or (n and labels.min() < 0):
        return None  # not usable as class indices: predict without them
    return labels.astype(np.int64)


def _label_names(path: Path, archive: Any, labels: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Names of an npz's integer labels, found as the npz loader finds them: a ``class_names`` array,
    else the known names of the file (pbc28, bloodmnist), else the model's own classes by index."""
    count = int(labels.max(initial=-1)) + 1
    if "class_names" in archive.files and archive["class_names"].dtype.kind in "US":
        names = [str(n) for n in archive["class_names"]]
    else:
        known = [n for prefix, n in KNOWN_CLASS_NAMES.items() if path.name.lower().startswith(prefix)]
        names = list(known[0]) if known and len(known[0]) >= count else list(classes)
    return names + [f"class_{i}" for i in range(len(names), count)]


def collect(inputs: Sequence[Path], *, split: str | None = None, classes: Sequence[str] = ()) -> list[Item]:
    """Every image named by ``inputs`` (files, folders searched recursively, npz files), in order.

    ``classes`` (the model's) name npz labels when the file does not name them itself."""
    if not inputs:
        raise UserError("no INPUT given; pass image files, folders or an .npz file")
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                raise UserError(f"{path}: no images ({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))}) in this "
                                "folder or below")
            items += [Item(p) for p in files]
        elif path.is_file() and path.suffix.lower() == ".npz":
            items += _npz_items(path, split, classes)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            items.append(Item(path))
        elif path.exists():
            raise UserError(f"{path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}), folder or .npz file")
        else:
            raise UserError(f"{path}: no such file or folder")
    if split is not None and not any(item.key is not None for item in items):
        raise UserError("--split applies to .npz inputs only, and none was given")
    return items


# ---------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class InputSpec:
    """What the model takes, from the card: channels, square size, modality, normalisation."""

    channels: int
    image_size: int
    modality: str
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> InputSpec:
        spec = card["input"]
        return cls(int(spec["channels"]), int(spec["image_size"]), str(spec.get("modality", "")),
                   np.asarray(spec["mean"], dtype=np.float32), np.asarray(spec["std"], dtype=np.float32))


def _read_image(path: Path, spec: InputSpec) -> np.ndarray:
    """An image file as (H, W, C) float32 in the loaders' scale, channels converted for the model."""
    try:
        array, info = read_image(path, reduce_to=spec.image_size)  # a huge frame is reduced while decoding
    except UserError as err:
        raise UserError(str(err)) from None
    channels = array.shape[-1]
    if channels == 1:
        if spec.modality == "event":
            raise UserError(_event_refusal(path, 1))
        if spec.modality == "opd" and not info.dtype.startswith("float"):
            raise UserError(f"{path}: an image of integer levels ({info.dtype}); this phase (opd) model takes optical "
                            "path difference in radians as float values (a float TIFF or a float npz array)")
        return np.repeat(array, 3, axis=-1) if spec.channels == 3 else array  # gray repeated, as the loader does
    if channels == 3:
        return _from_colour(array, spec, str(path), channels_in=4 if info.alpha else 3)
    if spec.modality == "multichannel" and channels == spec.channels:
        return array
    if spec.modality == "event":
        raise UserError(_event_refusal(path, channels))
    raise UserError(f"{path}: a {channels}-channel image, but the model takes {spec.channels} channel(s)")


def _event_refusal(where: str | Path, channels: int) -> str:
    return (f"{where}: {channels}-channel input, but this event-camera model takes 2-channel (ON, OFF) event "
            "counts; pass them as an npz array (N, H, W, 2)")


def _from_colour(rgb: np.ndarray, spec: InputSpec, where: str, *, channels_in: int = 3) -> np.ndarray:
    """(H, W, 3) colour -> what the model takes, by the rules in the module docstring."""
    if spec.channels == 3:
        return rgb
    if spec.channels == 1:
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., :1]  # a gray image stored as colour: exact
        if spec.modality == "opd":
            raise UserError(f"{where}: a colour image, but this phase (opd) model takes 1-channel optical path "
                            "difference; colour cannot be turned into phase")
        if spec.modality in ("gray", ""):
            return (rgb @ LUMA)[..., None]
        raise UserError(f"{where}: a colour image, but this {spec.modality} model takes 1 channel")
    if spec.channels == 2 and spec.modality == "event":
        raise UserError(_event_refusal(where, channels_in))
    raise UserError(f"{where}: a {channels_in}-channel image, but the model takes {spec.channels} channels")


def _from_array(array: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """One npz image (H, W) or (H, W, C) -> (H, W, C') float32, scaled as the npz loader scales."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3 and 0 in array.shape[:2]:
        raise UserError(f"{where}: an image of {array.shape[0]} x {array.shape[1]} pixels holds no pixels")
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4, spec.channels):
        raise UserError(f"{where}: image of shape {array.shape}; expected (H, W) or (H, W, C) with C in 1..4 "
                        "(channels last, the MedMNIST layout)")
    kind = array.dtype.kind
    if kind not in "uifb":
        raise UserError(f"{where}: dtype {array.dtype}; expected uint8, uint16, bool or float images")
    channels = array.shape[-1]
    if spec.modality == "event":
        if channels != 2:
            raise UserError(_event_refusal(where, channels))
        return array.astype(np.float32)  # counts, as stored
    if spec.modality == "multichannel" and channels == spec.channels:
        return _scaled(array, where)
    if channels == 2:
        raise UserError(f"{where}: a 2-channel image, but the model takes {spec.channels} channel(s)")
    if spec.modality == "opd" and kind != "f":
        raise UserError(f"{where}: dtype {array.dtype}; this phase (opd) model takes optical path difference in "
                        "radians as float values")
    x = _scaled(array, where)
    if channels == 1:
        return np.repeat(x, 3, axis=-1) if spec.channels == 3 else x
    return _from_colour(x[..., :3], spec, where, channels_in=channels)


def _scaled(array: np.ndarray, where: str) -> np.ndarray:
    """Stored values -> float32 as the loaders scale them (``runner.data.images.scale_values``)."""
    try:
        return scale_values(array, where)
    except UserError as err:
        raise UserError(str(err)) from None


def _finish(images: list[np.ndarray], spec: InputSpec) -> np.ndarray:
    """(H, W, C) float images -> (N, C, S, S) resized (as in training) and normalised, float32."""
    out = np.empty((len(images), spec.channels, spec.image_size, spec.image_size), dtype=np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():  # one resize call per image size (an npz has one size)
        x = torch.from_numpy(np.ascontiguousarray(np.stack([images[i] for i in indices]).transpose(0, 3, 1, 2)))
        out[indices] = resize(x, spec.image_size).numpy()
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing values are refused by _check_finite
        return (out - spec.mean[None, :, None, None]) / spec.std[None, :, None, None]


def _check_finite(x: np.ndarray, items: Sequence[Item]) -> np.ndarray:
    """UserError naming the first image whose values are finite as stored but not once resized and
    normalised (huge floats such as 3e38): the model would classify NaN."""
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        name = items[int(np.argmin(finite))].name
        raise UserError(f"{name}: its values overflow to infinity or NaN once resized and normalised (by the model "
                        f"card's mean and std); expected values in the scale the model was trained on ({VALUE_SCALING})")
    return x


def preprocess(items: Sequence[Item], spec: InputSpec, arrays: dict[tuple[Path, str], np.ndarray] | None = None) -> np.ndarray:
    """Items -> the model's input batch (N, C, S, S) float32; UserError naming an unreadable image.

    An image file is resized as soon as it is decoded, so one decoded frame is in memory at a time
    whatever the frames' size (npz images, small and already in memory, are resized together)."""
    arrays = {} if arrays is None else arrays
    out = np.empty((len(items), spec.channels, spec.image_size, spec.image_size), dtype=np.float32)
    images, at = [], []
    for i, item in enumerate(items):
        if item.key is None:
            out[i] = _finish([_read_image(item.path, spec)], spec)[0]
            continue
        source = (item.path, item.key)
        if source not in arrays:
            try:
                with np.load(item.path, allow_pickle=False) as archive:
                    arrays.clear()  # one array in memory at a time
                    arrays[source] = archive[item.key]
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise UserError(f"{item.path}: cannot read '{item.key}' ({load_error(err)})") from None
        images.append(_from_array(arrays[source][item.index], spec, item.name))
        at.append(i)
    if images:
        out[at] = _finish(images, spec)
    return _check_finite(out, items)


# ---------------------------------------------------------------------------------------------
# Runtimes


def load_runtime(export_dir: Path, card: dict[str, Any], fmt: str | None, device: str,
                 compiled: bool = False) -> tuple[str, InferenceFn]:
    """(format, function (N, C, S, S) float32 -> logits) for the export's onnx or pt2 file;
    ``compiled``: the pt2 program through torch.compile (CUDA graphs on CUDA)."""
    files = card["files"]
    fmt = fmt or ("pt2" if compiled else "onnx" if "onnx" in files else "pt2")
    if compiled and fmt != "pt2":
        raise UserError(f"--compile runs the .pt2 program through torch.compile; it does not apply to --format {fmt}")
    if fmt not in files:
        raise UserError(f"{export_dir}: no {fmt} model in this export (it has: {', '.join(files)}); "
                        "pick another --format or export it with --formats " + fmt)
    path = export_dir / str(files[fmt])
    if path.resolve().parent != export_dir.resolve():
        raise UserError(f"{export_dir / 'model_card.json'}: files.{fmt} must name a file in the export folder, "
                        f"got {files[fmt]!r}")
    if not path.is_file():
        raise UserError(f"{path}: missing; the model card lists it; export the model again")
    check_device(fmt, device)
    try:
        return fmt, onnx_runner(path, device=device) if fmt == "onnx" else pt2_runner(path, device=device, compiled=compiled)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any loader failure means the file is unusable
        line = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        raise UserError(f"{path}: corrupt or truncated model file ({line}); export the model again") from None


# ---------------------------------------------------------------------------------------------
# Prediction


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _batches(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


TOP = 3  # classes named per image in the table: the predicted one, then the runners-up


@dataclass
class Prediction:
    """What ``predict`` returns: one row per image, in input order.

    ``probabilities`` is the (N, C) float array of softmax probabilities, columns in ``classes``
    order (what scikit-learn's ``predict_proba`` gives); ``predicted`` the class names;
    ``frame()`` the typed table the CSV holds."""

    inputs: list[str]
    probabilities: np.ndarray  # (N, C) float64, rows sum to 1
    classes: tuple[str, ...]
    labels: list[str | None]  # the true class name, where an npz input names it
    seconds_total: float  # reading, preprocessing and the model (loading it excluded)
    seconds_model: float
    fmt: str

    @property
    def predicted(self) -> list[str]:
        """The predicted class name of every image, in input order."""
        return [self.classes[i] for i in self.probabilities.argmax(axis=1)] if len(self.inputs) else []

    @property
    def counts(self) -> Counter:
        return Counter(self.predicted)

    @property
    def labelled(self) -> int:
        return sum(label is not None for label in self.labels)

    @property
    def correct(self) -> int:
        return sum(label is not None and label == p for label, p in zip(self.labels, self.predicted, strict=True))

    def frame(self) -> pd.DataFrame:
        """The predictions as a typed DataFrame (the CSV's columns): ``input``, ``predicted`` and its
        ``probability`` (float), then ``top2``/``top2_probability`` and ``top3``/``top3_probability``
        (the runners-up, as many as the model has classes), and ``label`` where the input names one."""
        probs = self.probabilities
        order = np.argsort(-probs, axis=1, kind="stable")[:, :TOP]
        rows = np.arange(len(probs))
        columns: dict[str, Any] = {"input": pd.Series(self.inputs, dtype="string")}
        for rank in range(order.shape[1]):
            name = "predicted" if rank == 0 else f"top{rank + 1}"
            columns[name] = pd.Series([self.classes[j] for j in order[:, rank]], dtype="string")
            columns["probability" if rank == 0 else f"{name}_probability"] = probs[rows, order[:, rank]].astype(np.float64)
        if self.labelled:
            columns["label"] = pd.Series(self.labels, dtype="string")
        return pd.DataFrame(columns)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """``frame()`` as a list of dicts (one per image)."""
        return [{k: v for k, v in row.items() if not (k == "label" and pd.isna(v))}
                for row in self.frame().to_dict("records")]


def predict(export_dir: Path, inputs: Sequence[Path] | np.ndarray | Any, *, layout: str | None = None,
            batch_size: int | None = None, device: str = "cpu", fmt: str | None = None, split: str | None = None,
            compiled: bool = False) -> Prediction:
    """Classify images with the export in ``export_dir``.

    ``inputs``: a list of files, folders and npz files; or images in memory: one numpy array or
    torch tensor, or a list of images each (H, W) or (H, W, C) (numpy arrays, PIL images). How an
    array's axes are read (``layout``: "HW", "HWC", "CHW", "NHW", "NHWC" or "NCHW") follows from its
    shape where only one reading fits (a channel axis holds at most 4 channels, or the model's
    count); where several fit, e.g. (3, 40, 40), pass ``layout`` (see ``array_items``).
    ``batch_size``: images per model call; None: :func:`default_batch` of the model's frame size.
    ``compiled``: the .pt2 program through torch.compile, for small batches on CUDA (see ``pt2_runner``)."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, but got {batch_size}")
    export_dir = find_export(Path(export_dir))
    card = read_card(export_dir)
    classes = [str(c) for c in card["classes"]]
    spec = InputSpec.from_card(card)
    arrays: dict[tuple[Path, str], Any] = {}
    if in_memory(inputs):
        if split is not None:
            raise UserError("split applies to .npz inputs only, not to images in memory")
        items, arrays = array_items(inputs, layout=layout, channels=spec.channels)
    else:
        if layout is not None:
            raise UserError("layout applies to images in memory (arrays, tensors), not to files")
        items = collect(inputs, split=split, classes=classes)
    fmt, run = load_runtime(export_dir, card, fmt, device, compiled)
    start = time.perf_counter()  # throughput counts reading, preprocessing and the model, not loading it
    chunks: list[np.ndarray] = []
    model_seconds = 0.0
    for batch in _batches(items, batch_size or default_batch(spec.image_size)):
        x = preprocess(batch, spec, arrays)
        t0 = time.perf_counter()
        logits = run(x)
        model_seconds += time.perf_counter() - t0
        chunks.append(softmax(np.asarray(logits, dtype=np.float64)))
    probabilities = np.concatenate(chunks) if chunks else np.empty((0, len(classes)))
    return Prediction([item.name for item in items], probabilities, tuple(classes), [item.label for item in items],
                      time.perf_counter() - start, model_seconds, fmt)


#: How every CSV ``runner.predict`` writes begins: the only kind of existing file ``--out`` replaces.
CSV_START = "input,predicted,"


def check_out(path: Path) -> None:
    """UserError unless ``path`` is free or holds an earlier predictions CSV: predict never overwrites a
    file it did not write (an input image, the model, someone's table)."""
    if path.is_symlink():
        raise UserError(f"--out {path}: is a symbolic link; pass the path of a new CSV file or of earlier predictions")
    if path.is_dir():
        raise UserError(f"--out {path}: is a directory; pass the path of a CSV file")
    if not path.exists():
        return
    try:
        with open(path, "rb") as handle:
            first = handle.read(len(CSV_START))
    except OSError as err:
        raise UserError(f"--out {path}: cannot be read ({err.strerror or err})") from None
    if not path.is_file() or first != CSV_START.encode():
        raise UserError(f"--out {path}: exists and is not a predictions CSV written by runner.predict; it is left "
                        "alone: pass a new path (or remove the file yourself)")


def write_csv(result: Prediction, path: Path) -> None:
    """Write ``result.frame()`` through a temporary file, so a failure leaves no half-written CSV."""
    if path.is_dir():
        raise UserError(f"--out {path}: is a directory; pass the path of a CSV file")
    try:
        write_atomic(path, result.frame().to_csv(index=False, lineterminator="\n", float_format="%.6f"))
    except OSError as err:
        raise UserError(f"--out {path}: cannot write there ({err.strerror or err})") from None


def summary(result: Prediction, out: Path) -> list[str]:
    n = len(result.inputs)
    lines = [f"classified {n} images with {result.fmt} -> {out}"]
    counts = result.counts
    width = max((len(c) for c in counts), default=0)
    for name, count in counts.most_common():
        lines.append(f"  {name:<{width}s}  {count:>7d}  ({count / max(1, n):.1%})")
    if result.labelled:
        known = {label for label in result.labels if label is not None}
        if known & set(result.classes):
            lines.append(f"accuracy on the {result.labelled} labelled images: {result.correct / result.labelled:.4f}")
        else:
            lines.append("no accuracy: the input's labels name other classes than the model's "
                         f"({', '.join(sorted(known)[:4])}, ... vs {', '.join(result.classes[:4])}, ...)")
    rate = n / result.seconds_total if result.seconds_total > 0 else float("inf")
    model_rate = n / result.seconds_model if result.seconds_model > 0 else float("inf")
    lines.append(f"{rate:.0f} images/s end to end (reading and preprocessing included), {model_rate:.0f} images/s "
                 "in the model")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "runner.predict",
        f"Classify cell images with a model exported by {command('export')}.",
        "Exit status: 0 done, 2 bad input. Channel conversions and preprocessing: see the module docstring.",
    )
    parser.add_argument("export_dir", type=Path, metavar="EXPORT_DIR",
                        help="an export directory (runs/<name>/export/trial-<n>; runs/<name>/export when it holds one)")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                        help="image files, folders (recursive) or MedMNIST-layout .npz files")
    parser.add_argument("--out", type=Path, metavar="CSV", help="where to write the CSV (default: EXPORT_DIR/predictions.csv)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help=f"images per model call (default {DEFAULT_BATCH}, fewer for frames over 128 px: at most "
                        f"{BATCH_PIXELS:,} pixels a call)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default cpu)")
    parser.add_argument("--format", choices=("onnx", "pt2"), dest="fmt",
                        help="which exported file to run (default: onnx when present)")
    parser.add_argument("--split", metavar="NAME", help="npz inputs: only <NAME>_images (e.g. test); default: all arrays")
    parser.add_argument("--compile", action="store_true", dest="compiled",
                        help="run the .pt2 model through torch.compile (CUDA graphs with --device cuda: for small "
                             "batches); compiling takes seconds to a minute once")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        export_dir = find_export(args.export_dir)
        out = args.out if args.out is not None else export_dir / "predictions.csv"
        check_out(out)  # before the (possibly long) prediction, not after it
        result = predict(export_dir, args.inputs, batch_size=args.batch_size, device=args.device,
                         fmt=args.fmt, split=args.split, compiled=args.compiled)
        write_csv(result, out)
    except UserError as err:
        print_error(err)
        return EXIT_USER_ERROR
    print("\n".join(summary(result, out)))
    return 0


# ---------------------------------------------------------------------------------------------
# In-memory images (the Python API)

ARRAY_NAME = "array"
LIST_NAME = "images"
#: Every way the axes of an in-memory image array may be read: N images, C channels, H x W pixels.
LAYOUTS = ("HW", "HWC", "CHW", "NHW", "NHWC", "NCHW")
MAX_CHANNELS = 4  # a channel axis: 1 (gray), 2 (event ON/OFF), 3 (RGB) or 4 (RGBA), or the model's own count


def in_memory(inputs: Any) -> bool:
    """Whether ``inputs`` are images in memory (an array, a tensor, a PIL image, or a list of arrays
    or PIL images) rather than paths to files, folders and npz files."""
    if isinstance(inputs, (np.ndarray, torch.Tensor)) or _array_like(inputs):
        return True
    if isinstance(inputs, (list, tuple)) and inputs:
        return not isinstance(inputs[0], (str, Path))
    return False


def _array_like(value: Any) -> bool:
    return not isinstance(value, (str, Path, list, tuple)) and (
        hasattr(value, "__array_interface__") or hasattr(value, "__array__"))


def _plausible(shape: tuple[int, ...], layout: str, channels: int) -> bool:
    """Whether an array of ``shape`` can be images in ``layout``: a C axis holds a channel count (at
    most MAX_CHANNELS, or the model's own), H and W hold more pixels than that."""
    if len(shape) != len(layout):
        return False
    for size, axis in zip(shape, layout, strict=True):
        if axis == "C" and not (1 <= size <= MAX_CHANNELS or size == channels):
            return False
        if axis in "HW" and size <= MAX_CHANNELS:
            return False
    return True


def _layout_words(layout: str) -> str:
    return {"HW": "one (H, W) gray image", "HWC": "one (H, W, C) image", "CHW": "one (C, H, W) image",
            "NHW": "(N, H, W) gray images", "NHWC": "(N, H, W, C) images", "NCHW": "(N, C, H, W) images"}[layout]


#: A torch tensor of three axes is one image: torch holds a batch of gray images as (N, 1, H, W).
TENSOR_LAYOUTS = tuple(name for name in LAYOUTS if name != "NHW")


def read_layout(shape: tuple[int, ...], layout: str | None, channels: int, candidates: Sequence[str] = LAYOUTS) -> str:
    """The layout of an image array of ``shape``: ``layout`` when given (it must fit the shape), else the
    only one of ``candidates`` its shape allows; UserError naming the layouts when none or several fit."""
    shape = tuple(int(n) for n in shape)
    if layout is not None:
        if layout not in LAYOUTS:
            raise UserError(f"layout must be one of {', '.join(LAYOUTS)}, but got {layout!r}")
        if len(shape) != len(layout):
            raise UserError(f"an image array of shape {shape} has {len(shape)} axes, but layout {layout!r} has "
                            f"{len(layout)}")
        return layout
    fits = [name for name in candidates if _plausible(shape, name, channels)]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise UserError(f"an image array of shape {shape} fits no image layout; expected (H, W), (H, W, C), (C, H, W), "
                        f"(N, H, W), (N, H, W, C) or (N, C, H, W) with C <= {MAX_CHANNELS} and H, W > {MAX_CHANNELS}")
    readings = " or ".join(f"{_layout_words(name)} (layout={name!r})" for name in fits)
    raise UserError(f"an image array of shape {shape} is ambiguous: it could be {readings}; pass layout=")


def _to_nhwc(array: np.ndarray, layout: str) -> np.ndarray:
    """``array`` in ``layout`` -> (N, H, W, C)."""
    full = {"HW": "NHWC", "HWC": "NHWC", "CHW": "NCHW", "NHW": "NHWC", "NHWC": "NHWC", "NCHW": "NCHW"}[layout]
    for axis in full:
        if axis not in layout:
            array = np.expand_dims(array, full.index(axis))
    return array if full == "NHWC" else array.transpose(0, 2, 3, 1)


def _as_numpy(image: Any) -> np.ndarray:
    """A numpy view of an array, a torch tensor or a PIL image (values as stored)."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.float()  # float16 / bfloat16 have no numpy type the loaders read
        return tensor.numpy()
    return np.asarray(image)


def array_items(images: Any, *, layout: str | None = None, channels: int = 3
                ) -> tuple[list[Item], dict[tuple[Path, str], Any]]:
    """Items for images in memory, and the images (channels last) as ``preprocess`` reads them.

    One array or tensor: its layout is ``layout``, or the one its shape allows (:func:`read_layout`:
    a channel axis holds at most 4 channels, or ``channels``, the model's count, and H, W more than
    4 pixels): (40, 40, 3) is one colour image, (8, 40, 40) eight gray images, (8, 3, 40, 40)
    channels first; a numpy (3, 40, 40) could be one image or three and needs ``layout`` (a torch
    tensor of three axes is one image, as torch holds images). A list (or tuple):
    one image per element, each (H, W) or (H, W, C), sizes may differ. Values are scaled by dtype as
    the loaders scale files (uint8 / 255, uint16 / 65535, float as stored)."""
    if isinstance(images, (list, tuple)):
        if layout not in (None, "HW", "HWC"):
            raise UserError(f"a list of images takes each image as (H, W) or (H, W, C); layout {layout!r} does not apply")
        arrays = []
        for i, image in enumerate(images):
            if isinstance(image, (str, Path)):
                raise UserError(f"images[{i}]: a path among images in memory; pass either paths or images")
            array = _as_numpy(image)
            if array.size == 0:
                raise UserError(f"images[{i}]: an image of shape {tuple(array.shape)} holds no pixels")
            if array.ndim not in (2, 3) or not _plausible(array.shape, "HWC"[: array.ndim], channels):
                raise UserError(f"images[{i}]: an image of shape {tuple(array.shape)}; each image of a list must be "
                                f"(H, W) or (H, W, C) with C <= {MAX_CHANNELS}")
            arrays.append(array if array.ndim == 3 else array[..., None])
        source = (Path(LIST_NAME), "")
        return [Item(source[0], "", i) for i in range(len(arrays))], {source: arrays}
    array = _as_numpy(images)
    if array.size == 0:
        none = array.ndim == 4 and array.shape[0] == 0 and 0 not in array.shape[1:]
        raise UserError(f"an image array of shape {tuple(array.shape)} " + ("holds no images: it is empty" if none
                                                                           else "holds no pixels"))
    candidates = TENSOR_LAYOUTS if isinstance(images, torch.Tensor) else LAYOUTS
    array = _to_nhwc(array, read_layout(array.shape, layout, channels, candidates))
    if len(array) == 0:
        raise UserError("no images: the array is empty")
    source = (Path(ARRAY_NAME), "")
    return [Item(source[0], "", i) for i in range(len(array))], {source: array}


if __name__ == "__main__":
    sys.exit(run_command(main))
