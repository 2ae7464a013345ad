"""Checking an export before it is kept: the check images (the run's validation split, regenerated),
the rebuilt model's accuracy against the trial's record, every format's logits against the eager
model at batch 1 and batch 64, and latency on the CPU."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cellsparse.errors import UserError
from objectives.throughput import warm_allocator
from runner.data import load_dataset
from runner.engine.artefacts import InferenceFn

PARITY_IMAGES = 64  # validation images every format is checked on (and timed at batch 64)
PARITY_ATOL = 1e-4  # max |exported - eager| logit difference allowed (fp32)
ACCURACY_SLACK = 1  # images the re-scored validation accuracy may differ by (thread-order ties)


class ExportError(UserError):
    """An export could not be produced or did not match the eager model; the message has the figures."""


@dataclass
class CheckImages:
    """Validation images as the model sees them (normalised), and what they are."""

    images: torch.Tensor  # (N, C, S, S) float32, the first PARITY_IMAGES of ``all_images``
    all_images: torch.Tensor | None  # the whole validation split, for the accuracy re-check
    labels: torch.Tensor | None
    source: str  # one line for the card


def check_images(space: Any, meta: dict[str, Any], *, log: Callable[[str], None]) -> CheckImages:
    """The run's validation split (regenerated from its data settings and seed), or random inputs."""
    shape = (int(meta["in_channels"]), int(meta["image_size"]), int(meta["image_size"]))
    try:
        data = load_dataset(**space.data.loader_kwargs(), seed=space.seed)
        if (data.in_channels, data.image_size, data.image_size) != shape or len(data.val_x) == 0:
            raise UserError(
                f"the reloaded data has shape {(data.in_channels, data.image_size)} and {len(data.val_x)} "
                f"validation images, the trial was trained on {shape[:2]}"
            )
        val_x = data.images("val")
        n = min(PARITY_IMAGES, len(val_x))
        return CheckImages(val_x[:n].contiguous(), val_x, data.val_y.long(), f"the first {n} validation images "
                           f"(runner.data.load_dataset, source {space.data.source}, seed {space.seed})")
    except (UserError, ImportError) as err:
        log(f"note: the validation data cannot be loaded ({err}); parity is checked on {PARITY_IMAGES} random "
            "normal images and the accuracy re-check is skipped")
        images = torch.randn(PARITY_IMAGES, *shape, generator=torch.Generator().manual_seed(0))
        return CheckImages(images, None, None, f"{PARITY_IMAGES} random normal images (validation data unavailable)")


@torch.no_grad()
def eager_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The eager model's logits, ``batch_size`` images per forward."""
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def recheck_accuracy(model: torch.nn.Module, checks: CheckImages, recorded: float | None) -> float | None:
    """Validation accuracy of the rebuilt model; ExportError when it is off the trial's own figure."""
    if checks.all_images is None or checks.labels is None:
        return None
    preds = eager_logits(model, checks.all_images, 256).argmax(dim=-1)
    accuracy = float((preds == checks.labels).float().mean())
    if recorded is not None and math.isfinite(recorded):
        n = len(checks.labels)
        if abs(accuracy - recorded) * n > ACCURACY_SLACK + 1e-6:
            raise ExportError(
                f"the rebuilt model scores {accuracy:.4f} on the {n} validation images, the trial recorded "
                f"{recorded:.4f}: the config and final k do not rebuild it, or the validation data differ from the "
                "trial's (the data files or the generator changed since the run); nothing was written"
            )
    return accuracy



@dataclass
class Parity:
    """How one format compares with the eager model at one batch size."""

    batch_size: int
    max_abs_diff: float
    class_mismatches: int
    images: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_ATOL and self.class_mismatches == 0


def check_parity(fmt: str, run: InferenceFn, model: torch.nn.Module,
                 images: torch.Tensor, hint: str = "") -> list[Parity]:
    """Compare ``run`` with eager at batch 1 and batch len(images); ExportError with the figures on a mismatch.

    ``hint`` is added to the message of a mismatch (a likely cause)."""
    results = []
    for batch_size in sorted({1, len(images)}):
        expected = eager_logits(model, images, batch_size).numpy()
        got = np.concatenate([run(images[i : i + batch_size].numpy()) for i in range(0, len(images), batch_size)])
        if got.shape != expected.shape:
            raise ExportError(f"parity check failed for {fmt} at batch {batch_size}: output shape {got.shape}, "
                              f"eager {expected.shape}; nothing was written")
        diff = float(np.abs(got - expected).max()) if got.size else 0.0
        if not math.isfinite(diff):
            diff = math.inf
        mismatches = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
        results.append(Parity(batch_size, diff, mismatches, len(images)))
    bad = [p for p in results if not p.ok]
    if bad:
        text = "; ".join(
            f"batch {p.batch_size}: max |exported - eager| = {p.max_abs_diff:.3g} (limit {PARITY_ATOL:g}), "
            f"{p.class_mismatches} of {p.images} predicted classes differ" for p in bad
        )
        raise ExportError(f"parity check failed for {fmt}: {text}{hint}; nothing was written")
    return results


def time_batches(run: Callable[[Any], Any], x: Any, *, min_time_s: float = 0.3, max_repeats: int = 30) -> float:
    """Median milliseconds per call of ``run(x)``: 2 warm-up calls, then repeats for ``min_time_s``."""
    for _ in range(2):
        run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def measure_latency(runners: dict[str, InferenceFn], images: torch.Tensor,
                    batch_sizes: Sequence[int] = (1, PARITY_IMAGES)) -> dict[str, dict[str, dict[str, float]]]:
    """``{runtime: {"batch_<n>": {"ms_per_batch", "ms_per_image", "images_per_s"}}}`` on the CPU.

    Batches larger than the check images repeat them. Threads are whatever the runners were built
    with (the exporter uses the same count for torch and onnxruntime). The allocator is warmed first,
    as the throughput objective warms it, so the figures do not depend on what the process ran before.
    """
    warm_allocator()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, run in runners.items():
        out[name] = {}
        for n in batch_sizes:
            reps = math.ceil(n / len(images))
            x = images.repeat(reps, 1, 1, 1)[:n].numpy()
            ms = time_batches(run, x)
            out[name][f"batch_{n}"] = {
                "ms_per_batch": round(ms, 4), "ms_per_image": round(ms / n, 5), "images_per_s": round(n / ms * 1e3, 1)
            }
    return out


def eager_runner(model: torch.nn.Module) -> InferenceFn:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run

