"""The dataset record every loader returns, and the steps all loaders share: split-size rules,
seeded class-stratified subsampling, resizing, and normalisation with train-split statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from search_space.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")
Size = int | float | None  # a split size as the user gives it (see load_dataset)


@dataclass
class CellDataset:
    """Train/val/test tensors ready for a model, plus what is needed to normalise new images alike.

    Images are (N, C, H, W) float32, already normalised per channel with ``mean`` and ``std``, which
    were computed on the train split only, in the loader's raw value scale (e.g. [0, 1] for 8-bit
    images): a deployed model must apply ``(x - mean) / std`` to images in that scale.
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
        """(images, labels) of 'train', 'val' or 'test'."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def normalised(
    splits: dict[str, tuple[Tensor, Tensor]], *, class_names: list[str], modality: str, source: str
) -> CellDataset:
    """Build the CellDataset: per-channel mean/std from the train images, applied to every split.

    Normalises the given image tensors in place (loaders pass tensors they own). A channel that is
    constant in the train split gets std 1: it carries no information, and dividing by 0 would
    only make NaNs."""
    std, mean = torch.std_mean(splits["train"][0], dim=(0, 2, 3), correction=0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    shape = (1, -1, 1, 1)
    out = {}
    for name in SPLITS:
        x, y = splits[name]
        out[f"{name}_x"] = x.sub_(mean.view(shape)).div_(std.view(shape))
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
