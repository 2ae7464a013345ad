"""The dataset record every loader returns, and the steps all loaders share: split-size rules,
seeded class-stratified subsampling, resizing, train-split statistics and per-batch normalisation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from search_space.errors import DataError

from .images import VALUE_SCALE

SPLITS: tuple[str, ...] = ("train", "val", "test")
_UINT8_SCALE = VALUE_SCALE[np.dtype(np.uint8)]  # the one definition of 8-bit value scaling
_STAT_CHUNK = 64  # images per step when summing uint8 statistics
Size = int | float | None  # a split size as the user gives it (see load_dataset)


@dataclass
class CellDataset:
    """Train/val/test images as stored, plus what turns a batch of them into what a model reads.

    Images are (N, C, H, W) in their stored form: uint8 for 8-bit sources (4x smaller than float, so
    a few thousand 512-px frames fit in memory and on a GPU), float32 otherwise, in the loader's raw
    value scale (:mod:`runner.data.images`). They are turned into model input only a batch at a time
    by :meth:`normalise`: scaled to that raw scale (uint8 / 255), then ``(x - mean) / std`` per
    channel, with ``mean`` and ``std`` computed on the train split only. A deployed model must apply
    the same to images in the raw scale.
    """

    train_x: Tensor
    train_y: Tensor  # (N,) int64
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    modality: str  # "brightfield" | "opd" | "event" (synthetic) or "rgb" | "gray" (real images)
    source: str  # where the images came from, for logs and reports

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """(stored images, labels) of 'train', 'val' or 'test'; :meth:`normalise` a batch before a model reads it."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def normalise(self, x: Tensor) -> Tensor:
        """Stored images (any leading shape, channels at dim -3) -> float32 model input, on x's device."""
        return normalise(x, self.mean, self.std)

    def images(self, name: str, index: slice | Tensor | None = None) -> Tensor:
        """Model input for a split (or the ``index`` part of it): :meth:`normalise` of the stored images."""
        x, _ = self.split(name)
        return self.normalise(x if index is None else x[index])

    @property
    def nbytes(self) -> int:
        """Bytes the stored images and labels take (what a device copy of the data costs)."""
        return sum(t.numel() * t.element_size() for name in SPLITS for t in self.split(name))


def normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Stored images -> float32 ``(x * value_scale - mean) / std`` per channel (channels at dim -3).

    uint8 is scaled by 1/255 as :data:`runner.data.images.VALUE_SCALE` says (multiplied, as the
    loaders always have, so a uint8 image gives bit for bit the numbers its float copy gave)."""
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(shape)
    if x.dtype == torch.uint8:
        x = x.float().mul_(_UINT8_SCALE)
    elif x.dtype != torch.float32:
        x = x.float()
    return (x - m) / s


def channel_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (std, mean) of stored images in the raw value scale, as float32.

    Float images: ``torch.std_mean`` (population std), as the loaders always computed it. uint8: exact
    integer sums over chunks, so no float copy of the whole split is ever made."""
    if x.dtype != torch.uint8:
        return torch.std_mean(x.float(), dim=(0, 2, 3), correction=0)
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in x.split(_STAT_CHUNK):
        wide = chunk.to(torch.float64)  # exact for integers up to 2**53
        total += wide.sum(dim=(0, 2, 3))
        squares += wide.square().sum(dim=(0, 2, 3))
    count = x.numel() // channels
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0)
    return (var.sqrt() * _UINT8_SCALE).float(), (mean * _UINT8_SCALE).float()


def cell_dataset(
    splits: dict[str, tuple[Tensor, Tensor]], *, class_names: list[str], modality: str, source: str
) -> CellDataset:
    """Build the CellDataset from stored splits: per-channel mean/std of the train images.

    A channel that is constant in the train split gets std 1: it carries no information, and dividing
    by 0 would only make NaNs."""
    std, mean = channel_statistics(splits["train"][0])
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    out = {}
    for name in SPLITS:
        x, y = splits[name]
        out[f"{name}_x"] = x if x.dtype == torch.uint8 else x.float()
        out[f"{name}_y"] = y.long()
    return CellDataset(
        **out,
        class_names=list(class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        modality=modality,
        source=source,
    )


def check_size(name: str, value: Size) -> None:
    """A split size must be None, a non-negative int, or a fraction in (0, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{name} must be a count (int >= 0) or a fraction in (0, 1], got {value!r}")
    if isinstance(value, int) and value < 0:
        raise DataError(f"{name} must be a count >= 0 or a fraction in (0, 1], got {value}")
    if isinstance(value, float) and not 0 < value <= 1:
        raise DataError(f"{name} as a fraction must lie in (0, 1], got {value}")


def wanted(value: Size, available: int) -> int:
    """How many of ``available`` images a cap asks for: None/0 = all, int = at most that, float = fraction."""
    if not value:
        return available
    if isinstance(value, float):
        return max(1, round(value * available))
    return min(int(value), available)


def stratified_pick(labels: np.ndarray, n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of ``n`` images drawn without replacement, class by class in proportion.

    Every present class keeps at least one image when ``n`` allows it, so a small cap still shows the
    model every class. Seeded by ``rng``; returns everything when ``n >= len(labels)``."""
    if n >= len(labels):
        return np.arange(len(labels))
    counts = np.bincount(labels, minlength=num_classes)
    take = allocate(n, counts)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: take[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen))


def allocate(n: int, counts: np.ndarray) -> np.ndarray:
    """Split ``n`` over classes of sizes ``counts``: one each first (where n allows), the rest in
    proportion by largest remainder, never more than a class has."""
    counts = np.asarray(counts, dtype=np.int64)
    present = counts > 0
    take = np.zeros_like(counts)
    if n >= present.sum():
        take[present] = 1
    left = n - take.sum()
    spare = counts - take
    if left > 0 and spare.sum() > 0:
        exact = spare * (left / spare.sum())
        extra = np.minimum(np.floor(exact).astype(np.int64), spare)
        order = np.argsort(-(exact - extra), kind="stable")
        for c in order[: left - extra.sum()]:
            if extra[c] < spare[c]:
                extra[c] += 1
        take += extra
    return take


def resize(x: Tensor, size: int) -> Tensor:
    """Resize (N, C, H, W) float images to size x size: bilinear, antialiased when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def subsampled_splits(
    labels: dict[str, np.ndarray],
    class_names: list[str],
    sizes: dict[str, Size],
    seed: int,
    where: str,
    hint: Callable[[str], str],
    read: Callable[[str, np.ndarray], Tensor],
) -> dict[str, tuple[Tensor, Tensor]]:
    """Each split's seeded, class-stratified pick of ``sizes[split]`` of its images (every class must
    stay, else DataError with ``hint(split)``), read by ``read(split, kept indices)`` as (N, C, S, S)."""
    splits = {}
    for i, split in enumerate(SPLITS):
        y = labels[split]
        keep = stratified_pick(y, wanted(sizes[split], len(y)), len(class_names), np.random.default_rng([seed, i]))
        check_every_class(y[keep], class_names, split, where, hint(split))
        splits[split] = (read(split, keep), torch.from_numpy(y[keep]))
    return splits


def check_every_class(labels: np.ndarray, class_names: list[str], split: str, where: str, hint: str) -> None:
    """Every class needs an image in every split: training must see it, evaluation must score it."""
    counts = np.bincount(labels, minlength=len(class_names))
    missing = [class_names[c] for c in np.flatnonzero(counts == 0)]
    if missing:
        raise DataError(f"{where}: the {split} split has no images of class(es) {', '.join(missing)}{hint}")
