"""Writing a file so that nobody ever reads half of it (the project's one atomic write: the run
directory, trials, reports and exports go through it), and reading back a JSON record with one-line
errors.

A write the storage refuses (a full disk or quota, a read-only folder, no permission) is a
``WriteError``: one line naming the file and the reason, like any user error, and still an OSError
for code that handles those.
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cellsparse.errors import UserError

#: errno values that mean the storage refused a write, whatever was being written.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")


class WriteError(UserError, OSError):
    """The storage refused a write (full, read-only, no permission): one line naming the file."""


def storage_errno(err: BaseException | str | None) -> int | None:
    """The ``STORAGE_ERRNOS`` value behind ``err`` (an exception, anywhere down its chain, or the one-line
    text of one from another process, ``OSError: [Errno 28] ...``), else None."""
    if isinstance(err, str):
        found = _ERRNO_TEXT.search(err)
        number = int(found.group(1)) if found else None
        return number if number in STORAGE_ERRNOS else None
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def write_error(path: Path, err: OSError, fix: str = "free space or make it writable, then run it again") -> WriteError:
    """A WriteError for ``err`` met while writing ``path``."""
    reason = err.strerror or os.strerror(err.errno) if err.errno else str(err)
    error = WriteError(f"{path}: cannot write it ({reason}); {fix}")
    error.errno = err.errno
    return error


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh hidden path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error (same folder, so the rename is atomic), removed when it raises. The new file
    gets the permissions the umask gives any file, not a temporary file's 0600. A write the storage
    refuses becomes a WriteError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with suppress(OSError):  # (no folder to remove it from when the mkdir failed)
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError) and storage_errno(err) is not None:
            raise write_error(path, err) from None
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
