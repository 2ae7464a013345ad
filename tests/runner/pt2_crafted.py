"""Crafted .pt2 archives that run code when ``torch.export.load`` unpickles them (for the refusal tests)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class Touch:
    """Unpickling this runs ``touch <marker>`` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def craft(clean: Path, out: Path, how: str, marker: Path) -> Path:
    """Copy the .pt2 ``clean`` into ``out`` with a payload that touches ``marker`` when unpickled.

    ``how``: ``pickled_weight`` (a weight marked use_pickle), ``sample_inputs`` (sample inputs that
    fail weights_only, so torch retries with full unpickling) or ``opaque_constant`` (an opaque
    object constant, read with pickle.loads)."""
    with zipfile.ZipFile(clean) as src:
        entries = {name: src.read(name) for name in src.namelist()}
    root = next(iter(entries)).split("/", 1)[0] + "/"
    weights_config = root + "data/weights/model_weights_config.json"
    constants_config = root + "data/constants/model_constants_config.json"
    if how == "pickled_weight":
        config = json.loads(entries[weights_config])
        name, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        entries[root + "data/weights/" + meta["path_name"]] = _saved(Touch(marker))
        entries[weights_config] = json.dumps(config).encode()
    elif how == "sample_inputs":
        entries[root + "data/sample_inputs/model.pt"] = _saved(Touch(marker))
    elif how == "opaque_constant":
        config = json.loads(entries[constants_config])
        config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        entries[root + "data/constants/opaque_obj_0"] = pickle.dumps(Touch(marker))
        entries[constants_config] = json.dumps(config).encode()
    else:
        raise ValueError(how)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    return out


# --------------------------------------------------------------------------------------------- ambiguous names

#: Entries whose harmful copy makes torch.export.load unpickle (or, for the card, lie to predict).
TARGETS = {
    "weights_config": "data/weights/model_weights_config.json",
    "constants_config": "data/constants/model_constants_config.json",
    "sample_inputs": "data/sample_inputs/model.pt",
}


def read_entries(path: Path) -> list[tuple[str, bytes]]:
    """The archive's entries, in order, as (full name, bytes)."""
    with zipfile.ZipFile(path) as src:
        return [(info.filename, src.read(info)) for info in src.infolist()]


def write_entries(out: Path, entries: list[tuple[str, bytes]], *, compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip of ``entries`` exactly as given: repeated names included."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about a duplicate name; that is the point
        with zipfile.ZipFile(out, "w", compression) as dst:
            for name, data in entries:
                dst.writestr(name, data)
    return out


def duplicated(clean: Path, out: Path, target: str, marker: Path, *, harmful_first: bool,
               case: str | None = None) -> Path:
    """``clean`` with a second copy of a ``TARGETS`` entry that makes loading run ``touch marker``,
    stored before or after the clean copy (Python's zipfile returns the last one, torch may read either).

    The harmful weights config marks a weight for unpickling (that weight's file is then a pickle,
    which raw weights never are); the harmful constants config adds an opaque object; the harmful
    sample inputs do not load as weights only. With ``case`` ("upper" or "title") the harmful copy's
    file name differs from the clean one only in case, a name torch's reader matches
    case-insensitively, instead of being the very same name."""
    entries = read_entries(clean)
    root = entries[0][0].split("/", 1)[0] + "/"
    name = root + TARGETS[target]
    data = dict(entries)[name]
    if target == "sample_inputs":
        harmful = _saved(Touch(marker))
    else:
        config = json.loads(data)
        if target == "weights_config":
            meta = next(iter(config["config"].values()))
            meta["use_pickle"] = True
            weight = root + "data/weights/" + meta["path_name"]
            entries = [(n, _saved(Touch(marker)) if n == weight else d) for n, d in entries]
        else:
            config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                        "tensor_meta": None}
            entries.append((root + "data/constants/opaque_obj_0", pickle.dumps(Touch(marker))))
        harmful = json.dumps(config).encode()
    copy_name = name
    if case is not None:
        folder, _, base = name.rpartition("/")
        copy_name = f"{folder}/{base.upper() if case == 'upper' else base.title()}"
    index = next(i for i, (n, _) in enumerate(entries) if n == name)
    entries.insert(index if harmful_first else index + 1, (copy_name, harmful))
    return write_entries(out, entries)


# --------------------------------------------------------------------------------------------- fuzzing

def mutate(entries: list[tuple[str, bytes]], raw: bytes, rng: Any, marker: Path) -> bytes:
    """One random mutation of an archive (its ``entries`` and the zip's bytes ``raw``): repeated, case-twin,
    renamed, folder or extra entries, harmful payloads, reordered entries, deflated storage, or damaged
    bytes (flipped, cut, prepended, appended, concatenated archives)."""
    entries = list(entries)
    root = entries[0][0].split("/", 1)[0]
    kind = rng.choice(["dup", "case", "rename", "folder", "payload", "reorder", "deflate", "flip", "cut", "prepend",
                       "append", "concat", "root", "combo"])
    evil = _saved(Touch(marker))
    if kind in ("dup", "combo"):
        i = rng.randrange(len(entries))
        copy = (entries[i][0], rng.choice([evil, pickle.dumps(Touch(marker)), entries[i][1]]))
        entries.insert(rng.choice([i, i + 1, len(entries)]), copy)
    if kind in ("case", "combo"):
        i = rng.randrange(len(entries))
        name = entries[i][0]
        twin = name[:-1] + name[-1].swapcase() if name[-1].isalpha() else name.upper()
        entries.insert(rng.choice([i, i + 1]), (twin, evil))
    if kind == "rename":
        i = rng.randrange(len(entries))
        entries[i] = (rng.choice([f"{root}/../{entries[i][0]}", f"{root}/data/weights/model.pt",
                                  f"{root}/data/constants/opaque_obj_0", f"{root}/data/constants/custom_obj_0",
                                  f"{root}/data/weights\\weight_0", f"{root}/x\x00y"]), evil)
    if kind == "folder":
        entries.insert(rng.randrange(len(entries) + 1), (f"{root}/data/", b""))
    if kind == "payload":
        target = rng.choice(list(TARGETS))
        i = next(j for j, (n, _) in enumerate(entries) if n.endswith(TARGETS[target]))
        entries[i] = (entries[i][0], evil if target == "sample_inputs" else b'{"config": {"w": {"use_pickle": true}}}')
    if kind == "reorder":
        rng.shuffle(entries)
    if kind == "root":
        i = rng.randrange(len(entries))
        entries[i] = (entries[i][0].replace(root, root.upper() if root.islower() else root.lower(), 1), entries[i][1])
    buffer = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if kind == "deflate" else zipfile.ZIP_STORED) as dst:
            for name, data in entries:
                dst.writestr(name, data)
    data = buffer.getvalue()
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        data = bytes(b)
    elif kind == "cut":
        data = data[: rng.randrange(len(data))]
    elif kind == "prepend":
        data = b"PK\x03\x04" * rng.randint(1, 64) + data
    elif kind == "append":
        data = data + raw[: rng.randrange(len(raw))]
    elif kind == "concat":
        data = rng.choice([raw + data, data + raw])
    return data
