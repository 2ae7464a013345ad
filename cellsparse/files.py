"""Writing a file so that nobody ever reads half of it (the one atomic write every module uses), and
reading back a JSON record with one-line errors."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cellsparse.errors import UserError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh hidden path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error (same folder, so the rename is atomic), removed when it raises. The new file
    gets the permissions the umask gives any file, not a temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def read_json_object(path: Path, *, fix: str, missing: str | None = None) -> dict[str, Any]:
    """The JSON object in ``path``; a UserError naming the file and ``fix`` (what to do about it) when
    the file is absent (``missing``, when given, is that whole message), unreadable or not an object."""
    if not path.is_file():
        raise UserError(missing or f"{path}: missing; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot be read ({type(err).__name__}: {err}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}; {fix}")
    return data
