"""Load a ``torch.export`` .pt2 file without running any code it might carry.

``torch.export.load`` unpickles several kinds of archive entry: weights and constants marked
``use_pickle`` (``torch.load(weights_only=False)``), custom and opaque objects (``pickle.loads``),
legacy ``.pt`` weight files, and the sample inputs when they do not load with ``weights_only=True``.
A crafted .pt2 can therefore run arbitrary code the moment it is loaded. What ``runner.export``
writes holds none of these: plain tensors stored raw, JSON graphs and configs, sample inputs that
load as weights only. :func:`load_program` checks an archive against exactly that shape first (every
entry known, no entry marked for pickling, sample inputs loadable with ``weights_only=True``) and
only then hands it to ``torch.export.load``, so the pickle paths are never reached.

The check reads what torch reads. torch opens the archive with its own zip reader (miniz, through
``torch._C.PyTorchFileReader``), which does not agree with Python's ``zipfile`` on everything: for a
name stored twice ``zipfile`` returns the last copy while miniz returns whichever copy its sorted
lookup lands on, and miniz matches names case-insensitively. So the file is read into memory once
and both the check and ``torch.export.load`` work on those bytes (nothing can swap the file in
between); every entry the check inspects is read through torch's reader; and any archive the two
readers could disagree on is refused outright: a name stored twice, two names that differ only in
case, a folder entry, entries outside one root folder, or a different list of entries or sizes in
the two readers' eyes. torch writes none of these.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.export.pt2_archive import constants as C

from cellsparse.errors import UserError

# Entries (below the archive's root folder) an export made by torch.export.save of a plain module holds.
_NAME = r"[A-Za-z0-9_.-]+"
_PLAIN = re.compile("|".join([
    re.escape(C.ARCHIVE_FORMAT_PATH), re.escape(C.ARCHIVE_VERSION_PATH), r"byteorder", r"\.data/version",
    r"\.data/serialization_id", re.escape(C.EXTRA_DIR) + _NAME,
    re.escape(C.MODELS_DIR) + _NAME + r"\.json",
    re.escape(C.WEIGHTS_DIR) + re.escape(C.WEIGHT_FILENAME_PREFIX) + r"\d+",
    re.escape(C.CONSTANTS_DIR) + re.escape(C.TENSOR_CONSTANT_FILENAME_PREFIX) + r"\d+",
    re.escape(C.WEIGHTS_CONFIG_FILENAME_FORMAT).replace(r"\{\}", _NAME),
    re.escape(C.CONSTANTS_CONFIG_FILENAME_FORMAT).replace(r"\{\}", _NAME),
    re.escape(C.SAMPLE_INPUTS_FILENAME_FORMAT).replace(r"\{\}", _NAME),
]))
_AGAIN = "export the model again"


class UnsafeArchive(UserError):
    """A .pt2 holding something that loading would unpickle (or that this loader does not know)."""


def check_archive(path: Path, data: bytes | None = None) -> None:
    """UnsafeArchive (one line naming the entry) unless the archive holds only raw tensors and JSON,
    under names both zip readers read alike.

    ``data``: the file's bytes when already read (what will be loaded); else ``path`` is read.
    Also a UserError for a file that is not a readable zip archive."""
    path = Path(path)
    if data is None:
        data = _read(path)
    entries = _zip_entries(path, data)
    reader = _torch_reader(path, data)
    _check_same_view(path, entries, reader)
    for entry in entries:
        if not _PLAIN.fullmatch(entry):
            raise UnsafeArchive(f"{path}: refused, it holds '{entry}', which torch.export.load would unpickle "
                                f"or which an export of this project never writes; {_AGAIN}")
    for entry in entries:
        if entry.endswith(("_weights_config.json", "_constants_config.json")):
            _check_payload_config(path, entry, _record(path, reader, entry))
        elif entry.startswith(C.SAMPLE_INPUTS_DIR):
            _check_weights_only(path, entry, _record(path, reader, entry))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the model file ({err.strerror or err})") from None


def _corrupt(path: Path, err: BaseException | str) -> UserError:
    line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return UserError(f"{path}: corrupt or truncated model file ({line}); {_AGAIN}")


def _zip_entries(path: Path, data: bytes) -> dict[str, int]:
    """Python's view: entry name below the root folder -> size. Refuses repeated, case-twin and folder
    entries and entries outside one root folder, whatever they hold."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except Exception as err:  # noqa: BLE001 - BadZipFile, NotImplementedError (an unknown version), struct.error ...
        raise _corrupt(path, err) from None
    names = [info.filename for info in infos]
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        raise UnsafeArchive(f"{path}: refused, it holds {Counter(names)[repeated[0]]} entries named '{repeated[0]}'; "
                            "which copy a zip reader returns is not defined (torch's and Python's read different "
                            f"ones), so what would be loaded cannot be checked; {_AGAIN}")
    folded: dict[str, str] = {}
    for name in names:
        twin = folded.setdefault(name.casefold(), name)
        if twin != name:
            raise UnsafeArchive(f"{path}: refused, it holds '{twin}' and '{name}', which torch's zip reader does not "
                                f"tell apart (it matches names case-insensitively); {_AGAIN}")
    folders = [name for name in names if name.endswith("/")]
    if folders:
        raise UnsafeArchive(f"{path}: refused, it holds the folder entry '{folders[0]}', which torch.export.save "
                            f"never writes; {_AGAIN}")
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise UnsafeArchive(f"{path}: not a torch.export archive (entries outside one root folder)")
    root = roots.pop() + "/"
    return {info.filename[len(root):]: info.file_size for info in infos}


def _torch_reader(path: Path, data: bytes) -> Any:
    try:
        return torch._C.PyTorchFileReader(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - whatever miniz says, torch could not load it either
        raise _corrupt(path, err) from None


def _check_same_view(path: Path, entries: dict[str, int], reader: Any) -> None:
    """The entries (and their sizes) torch's reader sees must be the ones Python's does."""
    try:
        records = list(reader.get_all_records())
    except Exception as err:  # noqa: BLE001
        raise _corrupt(path, err) from None
    if sorted(records) != sorted(entries):
        only = sorted(set(records) ^ set(entries)) or sorted(records)
        raise UnsafeArchive(f"{path}: refused, torch's zip reader and Python's list different entries (e.g. "
                            f"'{only[0]}'), so what would be loaded cannot be checked; {_AGAIN}")
    for entry, size in entries.items():
        try:
            seen = int(reader.get_record_size(entry))
        except Exception as err:  # noqa: BLE001
            raise _corrupt(path, err) from None
        if seen != size:
            raise UnsafeArchive(f"{path}: refused, '{entry}' is {size} bytes to Python's zip reader but {seen} to "
                                f"torch's, so what would be loaded cannot be checked; {_AGAIN}")


def _record(path: Path, reader: Any, entry: str) -> bytes:
    """An entry's bytes as torch.export.load will read them."""
    try:
        raw = reader.get_record(entry)
    except Exception as err:  # noqa: BLE001
        raise _corrupt(path, err) from None
    return bytes(raw)


def _check_payload_config(path: Path, entry: str, raw: bytes) -> None:
    try:
        config = json.loads(raw)["config"]
        items = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UnsafeArchive(f"{path}: '{entry}' is not a payload config; {_AGAIN}") from None
    for name, meta in items:
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise UnsafeArchive(f"{path}: refused, '{entry}' marks '{name}' for unpickling (use_pickle), which could "
                                f"run code; an export of this project stores tensors raw; {_AGAIN}")


def _check_weights_only(path: Path, entry: str, raw: bytes) -> None:
    try:
        torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the reason, torch.export.load would retry with full unpickling
        raise UnsafeArchive(f"{path}: refused, '{entry}' does not load as plain tensors (weights_only) and "
                            f"torch.export.load would unpickle it; {_AGAIN}") from None


def load_program(path: Path) -> Any:
    """``torch.export.load`` of the file after :func:`check_archive` of the very same bytes; UserError
    for an unsafe or corrupt file."""
    path = Path(path)
    data = _read(path)
    check_archive(path, data)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - a checked archive torch cannot deserialize is a damaged one
        raise _corrupt(path, err) from None
