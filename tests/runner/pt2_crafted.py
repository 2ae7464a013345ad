"""Crafted .pt2 archives that run code when ``torch.export.load`` unpickles them (for the refusal tests)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

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
