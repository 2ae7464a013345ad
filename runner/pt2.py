"""Load a ``torch.export`` .pt2 file without running any code it might carry.

``torch.export.load`` unpickles several kinds of archive entry: weights and constants marked
``use_pickle`` (``torch.load(weights_only=False)``), custom and opaque objects (``pickle.loads``),
legacy ``.pt`` weight files, and the sample inputs when they do not load with ``weights_only=True``.
A crafted .pt2 can therefore run arbitrary code the moment it is loaded. What ``runner.export``
writes holds none of these: plain tensors stored raw, JSON graphs and configs, sample inputs that
load as weights only. :func:`load_program` checks an archive against exactly that shape first (every
entry known, no entry marked for pickling, sample inputs loadable with ``weights_only=True``) and
only then hands it to ``torch.export.load``, so the pickle paths are never reached.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch.export.pt2_archive import constants as C

from search_space.errors import UserError

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


class UnsafeArchive(UserError):
    """A .pt2 holding something that loading would unpickle (or that this loader does not know)."""


def check_archive(path: Path) -> None:
    """UnsafeArchive (one line naming the entry) unless ``path`` holds only raw tensors and JSON.

    Also a UserError for a file that is not a readable zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            roots = {name.split("/", 1)[0] for name in names}
            if len(roots) != 1 or any("/" not in name for name in names):
                raise UnsafeArchive(f"{path}: not a torch.export archive (entries outside one root folder)")
            root = roots.pop() + "/"
            entries = [name[len(root):] for name in names if not name.endswith("/")]
            for entry in entries:
                if not _PLAIN.fullmatch(entry):
                    raise UnsafeArchive(f"{path}: refused, it holds '{entry}', which torch.export.load would unpickle "
                                        "or which an export of this project never writes; export the model again")
            for entry in entries:
                if entry.endswith(("_weights_config.json", "_constants_config.json")):
                    _check_payload_config(path, entry, archive.read(root + entry))
                elif entry.startswith(C.SAMPLE_INPUTS_DIR):
                    _check_weights_only(path, entry, archive.read(root + entry))
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"{path}: corrupt or truncated model file ({err}); export the model again") from None


def _check_payload_config(path: Path, entry: str, raw: bytes) -> None:
    try:
        config = json.loads(raw)["config"]
        items = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UnsafeArchive(f"{path}: '{entry}' is not a payload config; export the model again") from None
    for name, meta in items:
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise UnsafeArchive(f"{path}: refused, '{entry}' marks '{name}' for unpickling (use_pickle), which could "
                                "run code; an export of this project stores tensors raw; export the model again")


def _check_weights_only(path: Path, entry: str, raw: bytes) -> None:
    try:
        torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the reason, torch.export.load would retry with full unpickling
        raise UnsafeArchive(f"{path}: refused, '{entry}' does not load as plain tensors (weights_only) and "
                            "torch.export.load would unpickle it; export the model again") from None


def load_program(path: Path) -> Any:
    """``torch.export.load(path)`` after :func:`check_archive`; UserError for an unsafe or corrupt file."""
    path = Path(path)
    check_archive(path)
    return torch.export.load(path)
