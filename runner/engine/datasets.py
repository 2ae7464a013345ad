"""The search's dataset, loaded once per process, and its shape read without loading it.

A trial process runs many trials on the same data (the in-process executor runs all of them, a Ray
worker is reused across trials); each would otherwise load or generate the data again."""

from __future__ import annotations

from typing import Any

from runner.data import describe_dataset, load_dataset
from search_space.spec import SearchSpace

_DATA: dict[tuple, Any] = {}


def _data_key(space: SearchSpace) -> tuple:
    kwargs = space.data.loader_kwargs()
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())) + (("seed", space.seed),)


def cached_dataset(space: SearchSpace) -> Any:
    """The space's dataset, loaded once per process (a process running many trials would otherwise load it for each)."""
    key = _data_key(space)
    if key not in _DATA:
        _DATA.clear()  # one dataset per process is enough; keep memory flat
        _DATA[key] = load_dataset(**space.data.loader_kwargs(), seed=space.seed)
    return _DATA[key]


_SHAPES: dict[tuple, tuple[int, int, int]] = {}


def with_data_size(space: SearchSpace) -> SearchSpace:
    """The space with ``data.image_size`` known: where the space file leaves it out (npz and folder
    data), the images' own side, read from the data as the loaders read it (array headers, image
    headers; non-square or mixed sizes are an error asking for image_size)."""
    if space.data.image_size is not None:
        return space
    return space.with_image_size(data_shape(space)[2])


def data_shape(space: SearchSpace) -> tuple[int, int, int]:
    """(in_channels, num_classes, image_size) without loading images."""
    key = _data_key(space)
    if key not in _SHAPES:
        _SHAPES[key] = tuple(describe_dataset(**space.data.loader_kwargs(), seed=space.seed))
    return _SHAPES[key]

