"""The export directory, written all or nothing: files are staged in a temporary directory beside it
and moved into place at the end; a previous export there is replaced file by file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runner.artefacts import CARD_FILE, FILES, PARITY_FILE, README_FILE
from search_space.errors import UserError

EXPORTS_DIR = "export"  # runs/<name>/export/: one folder per exported trial


def default_out(run_dir: Path, number: int) -> Path:
    """Where trial ``number`` of a run is exported by default: ``runs/<name>/export/trial-<n>``, so
    exports of different picks sit side by side."""
    return Path(run_dir) / EXPORTS_DIR / f"trial-{number}"


def check_out(out: Path, *, replace: bool = False) -> bool:
    """Whether ``out`` holds a previous export that ``replace`` allows to be replaced; UserError when it
    holds one and ``replace`` is off, or when anything else is in the way."""
    if not out.exists():
        blocker = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserError(f"--out {out}: {blocker} is a file, not a directory")
        return False
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if (out / CARD_FILE).is_file():
        if not replace:
            raise UserError(f"--out {out}: holds an export already ({_what(out)}); pass --replace to replace it, or "
                            "--out another folder")
        return True
    if any(out.iterdir()):
        raise UserError(f"--out {out}: not empty and holds no export ({CARD_FILE} missing); pass a new or empty directory")
    return False


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
    return (*FILES.values(), PARITY_FILE, CARD_FILE, README_FILE)


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
    ends without an error, removed when it raises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    _chmod_like_mkdir(tmp)
    try:
        yield tmp
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
