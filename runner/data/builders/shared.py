"""What every data-set builder shares: reading one image file, the seeded stratified split by
group, the command line's common flags, and writing the npz.

The npz is written member by member, each image straight into the archive (``ZIP_STORED``, zip64),
so building never holds more than one decoded image: a 6.6 GB file builds in the memory of one
frame. It is written to a hidden file beside ``--out`` and renamed when complete
(:func:`cellsparse.files.atomic_path`), and it carries a ``builder`` key naming the module that wrote
it: an existing ``--out`` without that key was not written here and is never overwritten.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from cellsparse.commands import EXIT_USER_ERROR, command_parser, print_error
from cellsparse.errors import UserError
from cellsparse.files import atomic_path
from runner.data.dataset import SPLITS, allocate
from runner.data.folder import DEFAULT_FRACTIONS, IMAGE_SUFFIXES
from search_space.errors import DataError

BUILDER_KEY = "builder"  # the key that marks a file as written by a builder (its value: the module)
_LFS_POINTER = b"version https://git-lfs"


# ---------------------------------------------------------------------------------------------
# Files and pixels


def image_files(folder: Path) -> tuple[list[Path], int]:
    """The image files of ``folder`` (sorted by name) and how many other entries were passed over:
    hidden entries (a macOS ``.DS_Store`` saved as ``.DS_169665.jpg`` is one) and non-image files."""
    files, skipped = [], 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped += 1
        else:
            files.append(path)
    return files, skipped


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; DataError naming the file when it is a Git LFS pointer
    or does not decode."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_LFS_POINTER))
        if head == _LFS_POINTER:
            raise DataError(f"{path}: a Git LFS pointer, not an image; fetch the clone's large files (git lfs pull)")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means the file is unusable
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DataError(f"{path}: cannot read image ({text})") from None


def resized(rgb: np.ndarray, size: int) -> np.ndarray:
    """A square (S, S, 3) uint8 frame at ``size``: area-averaged (box filter) when shrinking, bicubic
    when enlarging; unchanged when already that size."""
    if rgb.shape[0] == size:
        return rgb
    method = Image.Resampling.BOX if size < rgb.shape[0] else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize((size, size), method))


# ---------------------------------------------------------------------------------------------
# The split


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, val, test) of ``n`` items of one class: val and test are the project's fractions of
    the class (at least one each), train the rest."""
    val, test = (max(1, round(DEFAULT_FRACTIONS[s] * n)) for s in ("val", "test"))
    return n - val - test, val, test


def stratified_split(
    labels: np.ndarray, class_names: Sequence[str], seed: int, caps: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Indices of ``labels`` (one per group: a frame, or an original with its copies) for each split,
    70/10/20 class by class with a seeded shuffle.

    ``caps`` (per class) keeps at most that many of a class, taken from each split in proportion,
    so a capped file's splits are subsets of the uncapped file's (with the same seed): a smaller
    file never tests on what a larger one trains on."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c, name in enumerate(class_names):
        order = rng.permutation(np.flatnonzero(labels == c))
        full = split_counts(len(order))
        kept = split_counts(min(len(order), int(caps[c]))) if caps is not None else full
        if min(kept) < 1:
            raise DataError(f"class '{name}': {sum(kept)} item(s) cannot be split into train, val and test "
                            "(at least 3 needed)")
        for split, n_kept in zip(("train", "val", "test"), kept, strict=True):
            chosen[split].append(_block(order, full, split)[:n_kept])
    return {s: np.sort(np.concatenate(chosen[s])) for s in SPLITS}


def _block(order: np.ndarray, full: tuple[int, int, int], split: str) -> np.ndarray:
    """The slice of a class's shuffled order that is ``split`` (val first, then test, then train), at
    the uncapped counts ``full``; a cap takes the start of each slice."""
    _, val, test = full
    return {"val": order[:val], "test": order[val:val + test], "train": order[val + test:]}[split]


def class_caps(counts: np.ndarray, per_class: int | None, limit: int | None) -> np.ndarray | None:
    """Per-class caps from ``--per-class`` and ``--limit`` (a total shared out over classes in
    proportion to their sizes, at least 3 each so every split keeps every class), or None."""
    if per_class is None and limit is None:
        return None
    caps = np.asarray(counts, dtype=np.int64).copy()
    if per_class is not None:
        caps = np.minimum(caps, per_class)
    if limit is not None:
        floor = np.minimum(caps, 3)
        if limit < floor.sum():
            raise UserError(f"--limit {limit}: too small to give each of the {len(caps)} classes 3 items "
                            f"(one per split); use at least {int(floor.sum())}")
        caps = np.minimum(caps, floor + allocate(limit - int(floor.sum()), caps - floor))
    return caps


# ---------------------------------------------------------------------------------------------
# The command line


def parser(module: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The parser of ``python -m runner.data.builders.<name>`` with the flags every builder takes."""
    p = command_parser(module, description, epilog)
    p.add_argument("--clone", type=Path, required=True, metavar="DIR", help="the local clone of the data set's repository")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npz", help="the npz to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of anything else random; default 0)")
    p.add_argument("--per-class", type=positive, metavar="N", help="keep at most N items of each class")
    p.add_argument("--limit", type=positive, metavar="N",
                   help="keep about N items in all, shared out over classes in proportion")
    return p


def positive(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run(build: Callable[[argparse.Namespace], list[str]], args: argparse.Namespace) -> int:
    """Run a builder: its summary lines on stdout, or a user error as one line on stderr (exit 2)."""
    try:
        check_out(args.out)
        lines = build(args)
    except UserError as err:
        print_error(err)
        return EXIT_USER_ERROR
    print("\n".join(line for line in lines if line))
    return 0


# ---------------------------------------------------------------------------------------------
# Writing


def check_out(out: Path) -> None:
    """UserError unless ``out`` is free to write: absent, or a file a builder wrote."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; pass the path of the .npz file to write")
    if out.exists() and written_by(out) is None:
        raise UserError(f"--out {out}: exists and was not written by a builder of this project (it has no "
                        f"'{BUILDER_KEY}' key); it is left alone: remove it yourself or choose another path")


def written_by(path: Path) -> str | None:
    """The builder module named in ``path``, or None when it is not an npz a builder wrote."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if BUILDER_KEY not in archive.files:
                return None
            value = archive[BUILDER_KEY]
    except Exception:  # noqa: BLE001 - unreadable, not a zip, a pickle: not ours
        return None
    text = str(value) if value.ndim == 0 and value.dtype.kind == "U" else ""
    return text if text.startswith("runner.data.builders.") else None


class NpzStream:
    """An npz being written: small arrays whole, image arrays one frame at a time."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self._archive = archive

    def array(self, key: str, value: np.ndarray) -> None:
        """Write ``value`` (numbers or strings, never objects) as ``key``."""
        with self._archive.open(f"{key}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)

    @contextmanager
    def frames(self, key: str, count: int, side: int) -> Iterator[Callable[[np.ndarray], None]]:
        """A function that appends one (side, side, 3) uint8 frame to ``key``; exactly ``count`` must come."""
        written = 0
        with self._archive.open(f"{key}.npy", "w", force_zip64=True) as member:
            _header(member, (count, side, side, 3))

            def add(frame: np.ndarray) -> None:
                nonlocal written
                assert frame.shape == (side, side, 3) and frame.dtype == np.uint8, (frame.shape, frame.dtype)
                member.write(np.ascontiguousarray(frame).tobytes())
                written += 1

            yield add
        assert written == count, f"{key}: {written} frames written, {count} declared"


def _header(member: IO[bytes], shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(member, header)


def write_npz(out: Path, builder: str, fill: Callable[[NpzStream], Any]) -> Any:
    """Write ``out`` atomically: ``fill`` adds the arrays, then the ``builder`` key is added; nothing
    is left at ``out`` (or beside it) when ``fill`` raises. Returns what ``fill`` returns."""
    check_out(out)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        stream = NpzStream(archive)
        result = fill(stream)
        stream.array(BUILDER_KEY, np.array(builder))
    return result


def labels_array(labels: Sequence[int]) -> np.ndarray:
    """Labels as MedMNIST stores them: (N, 1) uint8."""
    return np.asarray(labels, dtype=np.uint8).reshape(-1, 1)


def strings(values: Sequence[str]) -> np.ndarray:
    """A 1-D unicode array (never an object array, which would need unpickling to read)."""
    return np.array(list(values), dtype=str) if len(values) else np.zeros(0, dtype="<U1")


def file_size(path: Path) -> str:
    """The size of ``path`` in MB or GB, for a summary line."""
    size = path.stat().st_size
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"

