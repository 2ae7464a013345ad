"""White cells in smear fields: square windows of 640x480 smear fields, one stained white cell each.

    python -m runner.data.builders.wbc_fields --clone DeepBioNet_dataset_BCCD_WBC_Classifition --out wbc_fields480.npz

Source: the "WBC Classification Dataset" folder of a clone of
github.com/usmanalishams/DeepBioNet_dataset_BCCD_WBC_Classifition (built and checked at commit
0b67463); ``--clone`` is the clone's root or that folder itself. Its class folders hold originals
(``<n>.jpg``, 640x480, a few 680x480) and augmented copies of them
(``<CLASS>_original_<n>.jpg_<uuid>.jpg``: flips, rotations, zooms, some turned to portrait).

What counts as an original: every file that is not a copy, grouped by decoded pixels, so a file saved
twice (``Copy of 310.jpg`` is ``310.jpg``; ``170.jpg`` is ``353.jpg``) is one original. The split is
by original, seeded and class-stratified 70/10/20: val and test hold one frame per original and
never a copy; ``--train-copies`` adds to train the copies of train originals only. A class with
fewer than ``--min-originals`` originals is dropped (monocyte has 5: one test frame cannot measure
a class).

The frame: the field's full short side, a square window (480x480) slid along the long side to a
seeded random place that keeps the white cell inside with a margin of 1/15 of the window (32 px),
so the cell is not always centred; ``--size`` resizes (area averaging when shrinking). The cell is
found by its stain (:func:`find_cell`); where it is not found the window is centred.

Keys: ``{train,val,test}_images`` (N, S, S, 3) uint8, ``_labels`` (N, 1) uint8, ``_files`` (the
file under the class folders), ``_originals`` (N,) int32 (the original each frame is or was copied
from: one number per original), ``_boxes`` (N, 4) int16 (y0, x0, y1, x1, ends exclusive, of the
stained region in the output frame; -1 where none was found), ``class_names``, ``builder``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from runner.data.dataset import SPLITS
from search_space.errors import DataError

from . import shared

MODULE = "runner.data.builders.wbc_fields"
FOLDER = "WBC Classification Dataset"
SOURCE = "github.com/usmanalishams/DeepBioNet_dataset_BCCD_WBC_Classifition"
COPY_NAME = re.compile(r"^(?P<cls>.+?)_original_(?P<original>.+)_[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\.(?:jpe?g|png)$",
                       re.IGNORECASE)
MIN_ORIGINALS = 10
MARGIN = 1 / 15  # of the window's side: the stained region keeps this far from the window's edges

# find_cell's tuning, in pixels of a 480-px short side (scaled with the frame): the half-resolution
# map is smoothed over 21 px (42 full) to find the peak, the stain level is read within 31 px of it.
_SMOOTH_RADIUS, _PEAK_RADIUS, _CLOSING, _TUNED_AT = 10, 15, 5, 240
MIN_CONTRAST = 25.0  # purple score units (8-bit values): the stain must stand this far above the field
MIN_SHARE, MAX_SHARE = 0.0025, 0.25  # of the field: a found region is between a platelet and a quarter


@dataclass(frozen=True)
class Cell:
    """Where :func:`find_cell` put the stained cell: its box (y0, x0, y1, x1; ends exclusive) and
    area in the field's pixels, the stain's contrast over the field, and whether that is a finding."""

    box: tuple[int, int, int, int]
    area: int
    contrast: float
    found: bool


def find_cell(rgb: np.ndarray) -> Cell:
    """The stained white cell of a smear field (H, W, 3) uint8.

    The heuristic: a white cell's nucleus (and, in some stains, its cytoplasm) is purple, high in red
    and blue and low in green, while red cells, platelets' surroundings and the background are not.
    On a half-resolution copy, score every pixel ``min(R, B) - G``; the peak of the score averaged
    over a nucleus-sized window is the cell (a platelet is as purple but too small to win the
    average); pixels scoring above halfway between the field's median and the stain level near the
    peak, closed by a small filter, are the stain; the connected region holding the peak is the cell.
    Found when the stain stands ``MIN_CONTRAST`` above the field and the region is a plausible size.
    """
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    half = rgb[:h, :w].astype(np.float32).reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    score = np.minimum(half[..., 0], half[..., 2]) - half[..., 1]  # (h/2, w/2)
    scale = min(score.shape) / _TUNED_AT
    py, px = np.unravel_index(np.argmax(_box_mean(score, max(1, round(_SMOOTH_RADIUS * scale)))), score.shape)
    r = max(1, round(_PEAK_RADIUS * scale))
    field_level = float(np.median(score))
    stain_level = float(np.percentile(score[max(0, py - r):py + r + 1, max(0, px - r):px + r + 1], 90))
    contrast = stain_level - field_level
    mask = _closed(score > field_level + contrast / 2, 2 * max(1, round(_CLOSING * scale / 2)) + 1)
    region = _region(mask, int(py), int(px))
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return Cell((-1, -1, -1, -1), 0, contrast, False)
    area = int(len(ys)) * 4
    box = (2 * int(ys.min()), 2 * int(xs.min()), 2 * int(ys.max()) + 2, 2 * int(xs.max()) + 2)
    share = area / (rgb.shape[0] * rgb.shape[1])
    return Cell(box, area, contrast, contrast >= MIN_CONTRAST and MIN_SHARE <= share <= MAX_SHARE)


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """The mean of ``x`` over the (2r+1)^2 window at every pixel (edges repeated)."""
    n = 2 * radius + 1
    c = np.pad(np.pad(x, radius, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]) / (n * n)


def _closed(mask: np.ndarray, size: int) -> np.ndarray:
    """Morphological closing (dilate, then erode) with a ``size`` square: joins a nucleus's lobes."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.filter(ImageFilter.MaxFilter(size)).filter(ImageFilter.MinFilter(size))) > 0


def _region(mask: np.ndarray, y: int, x: int) -> np.ndarray:
    """The 4-connected region of ``mask`` that holds (y, x), or the one nearest to it."""
    if not mask.any():
        return mask
    if not mask[y, x]:
        ys, xs = np.nonzero(mask)
        nearest = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
        y, x = int(ys[nearest]), int(xs[nearest])
    region = np.zeros_like(mask)
    region[y, x] = True
    while True:  # grow inside the mask until it stops
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= mask
        if np.array_equal(grown, region):
            return region
        region = grown


def window(shape: tuple[int, int], cell: Cell, rng: np.random.Generator) -> tuple[int, int, int]:
    """(top, left, side) of the square window: the field's short side, slid along the long side to a
    random offset that keeps the found cell ``MARGIN`` inside; centred on the cell where no offset
    can (the cell at the field's edge), centred on the field where no cell was found."""
    h, w = shape
    side = min(h, w)
    extent = max(h, w) - side
    along = 1 if w >= h else 0  # the axis the window slides along: x for a landscape field
    if not cell.found:
        offset = extent // 2
    else:
        start, end = cell.box[along], cell.box[along + 2]
        margin = round(MARGIN * side)
        low, high = max(0, end + margin - side), min(extent, start - margin)
        offset = int(rng.integers(low, high + 1)) if low <= high else int(np.clip(round((start + end - side) / 2), 0, extent))
    return (0, offset, side) if along else (offset, 0, side)


@dataclass
class Original:
    """One original field: its files (the same pixels saved under several names; the first is the
    one written), its class and the augmented copies of any of its files."""

    files: list[Path]
    label: int
    copies: list[Path] = field(default_factory=list)


def dataset_folder(clone: Path) -> Path:
    """The folder that holds the class folders: ``clone/WBC Classification Dataset``, or ``clone``
    when it is that folder."""
    if not clone.is_dir():
        raise DataError(f"--clone {clone}: no such folder (expected a clone of {SOURCE})")
    folder = clone if clone.name == FOLDER else clone / FOLDER
    if not folder.is_dir():
        raise DataError(f"--clone {clone}: no '{FOLDER}' folder in it (expected a clone of {SOURCE})")
    if len(_class_dirs(folder)) < 2:
        raise DataError(f"{folder}: expected a folder per class (EOSINOPHIL, LYMPHOCYTE, ...), found "
                        f"{len(_class_dirs(folder))}")
    return folder


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(folder: Path) -> tuple[list[str], list[Original], dict[str, int]]:
    """Class names (the folder names, lower case, sorted), the originals (duplicates merged, copies
    attached) and counts of what was passed over."""
    class_dirs = _class_dirs(folder)
    names = [d.name.lower() for d in class_dirs]
    seen: dict[tuple[tuple[int, ...], str], Original] = {}
    originals: list[Original] = []
    passed = {"other files": 0, "copies without their original": 0, "duplicate files": 0}
    for label, class_dir in enumerate(class_dirs):
        files, passed_over = shared.image_files(class_dir)
        passed["other files"] += passed_over
        by_name: dict[str, Original] = {}
        copies = [p for p in files if COPY_NAME.match(p.name)]
        plain = sorted((p for p in files if not COPY_NAME.match(p.name)), key=lambda p: (p.name.startswith("Copy of"), p.name))
        for path in plain:  # "Copy of n.jpg" after "n.jpg": the plain name is the one written
            pixels = shared.read_rgb(path)
            key = (pixels.shape, hashlib.sha1(pixels.tobytes()).hexdigest())
            original = seen.get(key)
            if original is None:
                original = seen[key] = Original([path], label)
                originals.append(original)
            elif original.label != label:
                raise DataError(f"{path}: the same image as {original.files[0]} but in another class "
                                f"({names[label]}, not {names[original.label]}); remove the wrong one")
            else:
                original.files.append(path)
                passed["duplicate files"] += 1
            by_name[path.name] = original
        if not by_name:
            raise DataError(f"{class_dir}: no original images (only copies or nothing); expected <n>.jpg files")
        for path in copies:
            original = by_name.get(COPY_NAME.match(path.name)["original"])
            if original is None:
                passed["copies without their original"] += 1
            else:
                original.copies.append(path)
    return names, originals, passed


@dataclass
class _Frame:
    path: Path
    label: int
    original: int


def build(args: argparse.Namespace) -> list[str]:
    """Write the npz ``args`` ask for; the summary lines."""
    folder = dataset_folder(args.clone)
    all_names, originals, passed = scan(folder)
    counts = np.bincount([o.label for o in originals], minlength=len(all_names))
    kept_classes = [c for c in range(len(all_names)) if counts[c] >= args.min_originals]
    if len(kept_classes) < 2:
        raise DataError(f"{folder}: fewer than 2 classes have --min-originals {args.min_originals} originals "
                        f"({', '.join(f'{n} {k}' for n, k in zip(all_names, counts, strict=True))})")
    relabel = {c: i for i, c in enumerate(kept_classes)}
    names = [all_names[c] for c in kept_classes]
    kept = [o for o in originals if o.label in relabel]
    y = np.array([relabel[o.label] for o in kept], dtype=np.int64)
    split = shared.stratified_split(y, names, args.seed,
                                    shared.class_caps(np.bincount(y, minlength=len(names)), args.per_class, args.limit))
    frames: dict[str, list[_Frame]] = {}
    for s in SPLITS:
        frames[s] = [_Frame(kept[i].files[0], int(y[i]), int(i)) for i in split[s]]
        if s == "train" and args.train_copies:
            frames[s] += [_Frame(p, int(y[i]), int(i)) for i in split[s] for p in kept[i].copies]
    side = args.size or _short_side(kept[0].files[0])
    found, shares = 0, []

    def fill(stream: shared.NpzStream) -> None:
        nonlocal found
        for s in SPLITS:
            boxes = np.full((len(frames[s]), 4), -1, dtype=np.int16)
            print(f"{s}: {len(frames[s])} frames ...", file=sys.stderr, flush=True)
            with stream.frames(f"{s}_images", len(frames[s]), side) as add:
                for j, frame in enumerate(frames[s]):
                    rgb = shared.read_rgb(frame.path)
                    cell = find_cell(rgb)
                    rel = f"{frame.path.parent.name}/{frame.path.name}"
                    top, left, size = window(rgb.shape[:2], cell, np.random.default_rng([args.seed, zlib.crc32(rel.encode())]))
                    add(shared.resized(rgb[top:top + size, left:left + size], side))
                    if cell.found:
                        found += 1
                        shares.append(cell.area / size**2)
                        y0, x0, y1, x1 = cell.box
                        boxes[j] = np.clip(np.round(np.array([y0 - top, x0 - left, y1 - top, x1 - left]) * side / size), 0, side)
            stream.array(f"{s}_labels", shared.labels_array([f.label for f in frames[s]]))
            stream.array(f"{s}_files", shared.strings([f"{f.path.parent.name}/{f.path.name}" for f in frames[s]]))
            stream.array(f"{s}_originals", np.array([f.original for f in frames[s]], dtype=np.int32))
            stream.array(f"{s}_boxes", boxes)
        stream.array("class_names", shared.strings(names))

    shared.write_npz(args.out, MODULE, fill)
    total = sum(len(f) for f in frames.values())
    dropped = [f"{all_names[c]} ({counts[c]} originals)" for c in range(len(all_names)) if c not in relabel]
    share = np.percentile(shares, [5, 50, 95]) * 100 if shares else np.zeros(3)
    table = [f"  {name:<12s} {' / '.join(str(sum(f.label == c for f in frames[s])) for s in SPLITS)}"
             f"   originals {int((y == c).sum())}" for c, name in enumerate(names)]
    return [f"wrote {args.out} ({shared.file_size(args.out)}): {side}x{side} RGB windows of the fields, "
            f"train/val/test = {' / '.join(str(len(frames[s])) for s in SPLITS)} frames "
            f"({'train with the copies of its originals' if args.train_copies else 'originals only'})",
            "frames per class (train / val / test):", *table,
            f"dropped, fewer than --min-originals {args.min_originals}: {', '.join(dropped)}" if dropped else "",
            f"{len(originals)} distinct originals; passed over: "
            + ", ".join(f"{n} {what}" for what, n in passed.items()),
            f"stained cell found in {found} of {total} frames (the others: a centred window); its stained region "
            f"covers {share[1]:.1f}% of the window (5-95%: {share[0]:.1f}-{share[2]:.1f}%)"]


def _short_side(path: Path) -> int:
    with Image.open(path) as im:
        return min(im.size)


def build_parser() -> argparse.ArgumentParser:
    p = shared.parser(MODULE, "Build an npz of square smear-field windows, one white cell each, from a local clone.",
                      f"Get the clone: git clone https://{SOURCE} (commit 0b67463). See README, 'Real field data'.")
    p.add_argument("--size", type=shared.positive, metavar="PX",
                   help="resize the windows to PX (default: the fields' short side, 480: native)")
    p.add_argument("--train-copies", action="store_true",
                   help="add the augmented copies of the train originals to train (never to val or test)")
    p.add_argument("--min-originals", type=int, default=MIN_ORIGINALS, metavar="N",
                   help=f"drop classes with fewer originals than N (default {MIN_ORIGINALS}; 0 keeps all, "
                        "a class needs 3 to reach every split)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return shared.run(build, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
