"""The export directory, written all or nothing: files are staged in a temporary directory beside it
and moved into place at the end; a previous export there is replaced file by file.

An export knows its own files by ``MANIFEST_FILE``, which it writes last: the name and sha256 of
every file it put there. A later export replaces exactly those files, and only while they are as
written: a folder holding someone else's ``model_card.json``, ``README.md`` or ``model.onnx`` (no
manifest, or not listed in it, or changed since) is refused with one line and left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cellsparse.errors import UserError
from cellsparse.files import storage_errno, write_atomic, write_error
from runner.engine.artefacts import CARD_FILE, FILES, MANIFEST_FILE, PARITY_FILE, README_FILE

EXPORTS_DIR = "export"  # runs/<name>/export/: one folder per exported trial



def default_out(run_dir: Path, number: int) -> Path:
    """Where trial ``number`` of a run is exported by default: ``runs/<name>/export/trial-<n>``, so
    exports of different picks sit side by side."""
    return Path(run_dir) / EXPORTS_DIR / f"trial-{number}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(out: Path) -> dict[str, str]:
    """The manifest of the export in ``out``: file name -> sha256; UserError when it cannot be read."""
    path = out / MANIFEST_FILE
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise UserError(f"--out {out}: {MANIFEST_FILE} is not readable, so which files are the export's is not known; "
                        "they are left alone: pass a new or empty directory") from None
    return {str(name): digest for name, digest in files.items()}


def check_out(out: Path, *, replace: bool = False) -> bool:
    """Whether ``out`` holds a previous export that ``replace`` allows to be replaced; UserError when it
    holds one and ``replace`` is off, or for anything else in the way, a file named like an export's that
    this project did not write there (or that changed since) included."""
    if not out.exists():
        blocker = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserError(f"--out {out}: {blocker} is a file, not a directory")
        return False
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    present = [name for name in _owned_names() if (out / name).exists() or (out / name).is_symlink()]
    if not (out / MANIFEST_FILE).is_file():
        if present:
            raise UserError(f"--out {out}: holds {present[0]}, which runner.export did not write there (no "
                            f"{MANIFEST_FILE}); it is left alone: pass a new or empty directory")
        if any(out.iterdir()):
            raise UserError(f"--out {out}: not empty and holds no export ({CARD_FILE} missing); pass a new or empty "
                            "directory")
        return False
    recorded = _recorded(out)
    for name in present:
        path = out / name
        if name != MANIFEST_FILE and (name not in recorded or path.is_symlink() or not path.is_file()
                                      or _sha256(path) != recorded[name]):
            raise UserError(f"--out {out}: {name} is not the file runner.export wrote there (changed since, or never "
                            "written by it); it is left alone: move it away, or pass another --out")
    if not replace:
        raise UserError(f"--out {out}: holds an export already ({_what(out)}); pass --replace to replace it, or "
                        "--out another folder")
    return True


def write_manifest(directory: Path) -> None:
    """Record every file in ``directory`` (the staged export) with its sha256, as ``MANIFEST_FILE``."""
    files = {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    text = json.dumps({"written_by": "runner.export", "files": files}, indent=2) + "\n"
    write_atomic(directory / MANIFEST_FILE, text)


def _what(out: Path) -> str:
    """Which trial the export in ``out`` holds, from its card, for the refusal."""
    try:
        card = json.loads((out / CARD_FILE).read_text(encoding="utf-8"))
        return f"trial {int(card['trial']['number'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return CARD_FILE


def _chmod_like_mkdir(path: Path) -> None:
    """mkdtemp makes 0700 directories; an export is shared like any folder (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _owned_names() -> tuple[str, ...]:
    """The file names an export writes into its directory, and the only ones it ever replaces or removes."""
    return (*FILES.values(), PARITY_FILE, CARD_FILE, README_FILE, MANIFEST_FILE)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Move the staged files in ``tmp`` into ``out``; ``tmp`` is removed.

    A new ``out`` is ``tmp`` renamed. Into an existing one (a previous export, see ``check_out``)
    only the export's own files are swapped: the previous ones are moved aside first and put back
    if anything fails, so ``out`` ends up either wholly old or wholly new and nothing else in it
    is touched.
    """
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    set_aside: list[str] = []
    placed: list[str] = []
    try:
        for name in _owned_names():
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, old / name)
                set_aside.append(name)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
            placed.append(path.name)
    except BaseException:
        for name in placed:
            os.replace(out / name, tmp / name)
        for name in set_aside:
            os.replace(old / name, out / name)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    tmp.rmdir()



@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` to write the export into; moved into ``out`` when the block
    ends without an error, removed when it raises (a write the storage refused: a WriteError naming
    ``out``)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        _chmod_like_mkdir(tmp)
    except OSError as err:
        if storage_errno(err) is None:
            raise
        raise write_error(out, err, "nothing was written; pass a writable --out") from None
    try:
        yield tmp
        write_manifest(tmp)
        _move_into_place(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, UserError) and storage_errno(err) is not None:
            raise write_error(out, err, "nothing was written; free space or pass a writable --out") from None
        raise
