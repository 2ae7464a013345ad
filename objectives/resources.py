"""Size, speed and memory of a model at inference.

* ``params``: the number of parameter elements, trainable or frozen, each shared tensor once.
  Buffers (BatchNorm running statistics, fixed position tables) are left out: they are not
  learned, and for the models in this space they are a rounding error beside the weights.
* ``latency_ms``: median wall time of a forward on the given batch, divided by its size: ms per
  image at that batch size. Torch's thread settings are left as the caller set them.
* ``peak_mem_mb``: MiB (2**20 bytes) at the peak of one inference forward: the model's parameters
  and buffers, the input batch, and the most bytes of tensors the forward itself holds at once.
  On CUDA the forward's part is ``torch.cuda.max_memory_allocated`` above what was allocated
  before it (so the trainer's optimizer state or a cached validation set does not count). On CPU
  PyTorch keeps no such statistic and tracemalloc does not see its allocator, so a dispatch mode
  follows every tensor storage an op creates until it is freed. It sees what the operators return,
  not scratch memory inside a kernel, nor allocator caching and fragmentation; the CUDA figure
  sees the caching allocator's block rounding. Compare memory within one device.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from objectives._inference import inference

MIB = 2**20


def count_params(model: nn.Module) -> int:
    """Parameter elements of ``model`` (trainable and frozen; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _synchronizer(images: torch.Tensor) -> Callable[[], None]:
    if images.is_cuda:
        device = images.device
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure_latency_ms(model: nn.Module, images: torch.Tensor, *, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds per image of an eval forward on ``images`` (at that batch size)."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, but got warmup={warmup}, repeats={repeats}")
    if images.dim() == 0 or images.shape[0] == 0:
        raise ValueError(f"latency needs a non-empty batch of images, but got shape {tuple(images.shape)}")
    sync = _synchronizer(images)
    times = []
    with inference(model):
        for _ in range(warmup):
            model(images)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            sync()
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / images.shape[0]


def _storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class _LiveStorageBytes(TorchDispatchMode):
    """Follows each tensor storage an op creates until it is freed; keeps the peak of their sum."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self._tracked: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for t in known:  # in-place ops on these return them: already counted by the caller
            self._tracked[t.untyped_storage()] = 0
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            if storage in self._tracked:
                continue
            nbytes = storage.nbytes()
            self._tracked[storage] = nbytes
            weakref.finalize(storage, self._release, nbytes).atexit = False
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


def measure_peak_memory_mb(model: nn.Module, images: torch.Tensor) -> float:
    """MiB at the peak of one eval forward on ``images``: weights, input, and the forward's tensors."""
    state = [*model.parameters(), *model.buffers()]
    resident = _storage_bytes([*state, images])
    with inference(model):
        if images.is_cuda:
            device = images.device
            # one forward first: the libraries' own buffers (cuBLAS's workspace, about 33 MiB, comes back
            # after anything captured a CUDA graph) are allocated then and are not the model's memory
            model(images)
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            out = model(images)
            torch.cuda.synchronize(device)
            forward = torch.cuda.max_memory_allocated(device) - before
            del out
        else:
            tracker = _LiveStorageBytes([*state, images])
            with tracker:
                out = model(images)
                del out
            forward = tracker.peak
    return (resident + forward) / MIB
