"""PBC at native resolution: the peripheral blood cells of pbc28.npz at full size, as an npz.

    python -m runner.data.builders.pbc --clone Blood-Cell-Classification --out pbc360.npz

Source: the PBC data set (Acevedo et al., Data in Brief 30:105474, 2020; CC BY 4.0), as the folder
``PBC_dataset_normal_DIB/<class>/*.jpg`` of a clone of github.com/AuralinACC/Blood-Cell-Classification
(built and checked at commit d2e7b75e). ``--clone`` is the clone's root or that folder itself.

Frames: most files are 360x363 (some 366x369, 360x360, a few 359-362 px); each is cropped to the
centred ``--crop`` square (360, no resizing: native resolution is the point) and, with ``--size``,
resized (area averaging when shrinking). A frame smaller than the crop is cropped to its own largest
centred square and enlarged to it (one file at d2e7b75e).

Labels: the eight folders in BloodMNIST's order, the order pbc28.npz uses (folder ``ig`` is
"immature granulocyte"), so a label means the same in both files. The split is seeded and
class-stratified, 70/10/20 (``shared.stratified_split``); it is not pbc28's split.

Keys: ``{train,val,test}_images`` (N, S, S, 3) uint8, ``_labels`` (N, 1) uint8, ``_files`` (the
file each frame came from, under the class folders), ``class_names``, ``builder``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runner.data.dataset import SPLITS
from runner.data.npz import BLOODMNIST_CLASSES
from search_space.errors import DataError

from . import shared

MODULE = "runner.data.builders.pbc"
FOLDER = "PBC_dataset_normal_DIB"
#: The class folders, in BloodMNIST's label order (``BLOODMNIST_CLASSES`` names them).
CLASS_FOLDERS: tuple[str, ...] = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                                  "neutrophil", "platelet")
NATIVE_CROP = 360
SOURCE = "github.com/AuralinACC/Blood-Cell-Classification"


def dataset_folder(clone: Path) -> Path:
    """The folder that holds the class folders: ``clone/PBC_dataset_normal_DIB`` or ``clone`` itself."""
    if not clone.is_dir():
        raise DataError(f"--clone {clone}: no such folder (expected a clone of {SOURCE})")
    folder = clone / FOLDER if (clone / FOLDER).is_dir() else clone
    present = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not present & set(CLASS_FOLDERS):
        raise DataError(f"--clone {clone}: no {FOLDER} folder and no class folders in it (expected a clone of "
                        f"{SOURCE}, holding {FOLDER}/{{{','.join(CLASS_FOLDERS)}}})")
    missing, extra = sorted(set(CLASS_FOLDERS) - present), sorted(present - set(CLASS_FOLDERS))
    if missing or extra:
        raise DataError(f"{folder}: " + "; ".join(
            ([f"missing class folder(s) {', '.join(missing)}"] if missing else [])
            + ([f"unexpected folder(s) {', '.join(extra)}"] if extra else []))
            + f"; expected exactly {', '.join(CLASS_FOLDERS)}")
    return folder


def centre_square(rgb: np.ndarray, side: int) -> tuple[np.ndarray, bool]:
    """The centred ``side`` square of a frame, and whether it had to be enlarged (frame smaller than side)."""
    h, w = rgb.shape[:2]
    s = min(h, w, side)
    top, left = (h - s) // 2, (w - s) // 2
    crop = rgb[top:top + s, left:left + s]
    return (shared.resized(crop, side), True) if s < side else (crop, False)


def build(args: argparse.Namespace) -> list[str]:
    """Write the npz ``args`` ask for; the summary lines."""
    folder = dataset_folder(args.clone)
    files: list[Path] = []
    labels: list[int] = []
    skipped = 0
    for label, name in enumerate(CLASS_FOLDERS):
        found, passed = shared.image_files(folder / name)
        if not found:
            raise DataError(f"{folder / name}: no image files (expected the class's .jpg frames)")
        files += found
        labels += [label] * len(found)
        skipped += passed
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=len(CLASS_FOLDERS))
    split = shared.stratified_split(y, BLOODMNIST_CLASSES, args.seed,
                                    shared.class_caps(counts, args.per_class, args.limit))
    side = args.size or args.crop
    enlarged = 0

    def fill(stream: shared.NpzStream) -> None:
        nonlocal enlarged
        for s in SPLITS:
            index = split[s]
            print(f"{s}: {len(index)} frames ...", file=sys.stderr, flush=True)
            with stream.frames(f"{s}_images", len(index), side) as add:
                for i in index:
                    frame, grown = centre_square(shared.read_rgb(files[i]), args.crop)
                    enlarged += grown
                    add(shared.resized(frame, side))
            stream.array(f"{s}_labels", shared.labels_array(y[index]))
            stream.array(f"{s}_files", shared.strings([f"{files[i].parent.name}/{files[i].name}" for i in index]))
        stream.array("class_names", shared.strings(BLOODMNIST_CLASSES))

    shared.write_npz(args.out, MODULE, fill)
    table = [f"  {name:<22s} {' / '.join(str(int((y[split[s]] == c).sum())) for s in SPLITS)}"
             for c, name in enumerate(BLOODMNIST_CLASSES)]
    return [f"wrote {args.out} ({shared.file_size(args.out)}): {side}x{side} RGB frames "
            f"(centre {args.crop}x{args.crop} crop{'' if side == args.crop else f', resized to {side}'}), "
            f"train/val/test = {' / '.join(str(len(split[s])) for s in SPLITS)}",
            "frames per class (train / val / test):", *table,
            f"passed over {skipped} hidden or non-image file(s) in the class folders" if skipped else "",
            f"{enlarged} frame(s) smaller than {args.crop} px were enlarged to it" if enlarged else ""]


def build_parser() -> argparse.ArgumentParser:
    p = shared.parser(MODULE, "Build an npz of the PBC blood-cell frames at native resolution from a local clone.",
                      f"Get the clone: git clone https://{SOURCE} (commit d2e7b75e). See README, 'Real field data'.")
    p.add_argument("--crop", type=shared.positive, default=NATIVE_CROP, metavar="PX",
                   help=f"side of the centred square cut from each frame (default {NATIVE_CROP}: native)")
    p.add_argument("--size", type=shared.positive, metavar="PX", help="resize the crops to PX (default: keep the crop's size)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return shared.run(build, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
