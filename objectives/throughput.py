"""Throughput: images per second of a model as it is deployed, held comparable on a busy machine.

What the value means. ``throughput`` is the images per second the model runs at on the space's
``deploy.runtime``, ``deploy.batch_size`` images per call and ``deploy.threads`` threads: the
median of timed rounds, each round a chunk of calls about ``CHUNK_S`` long that starts warm.

With ``deploy.calibrate: true`` it is expressed on the scale of a calm machine instead. A fixed
reference CNN (:func:`reference_model`, fixed weights,
prepared on the same runtime) is timed in the same process:

1. once per run and deployment, alone (``CALIBRATION_ROUNDS`` rounds), by the search's driver before
   its first trial; its best round is the *calibration rate*: what the reference does when the
   machine leaves it alone. The engine keeps it in the run directory and every trial process uses
   that one number (:func:`set_calibration`), so two trials timed in different processes (Ray
   workers, nodes, a resumed session) differ only by their ratios. A process with no calibration
   set (the objective used on its own) measures its own, once;
2. at each measurement, in interleaved rounds with the model (the order alternates, model first
   then reference first), so both see the same load within a round.

Each round gives ``model rate / reference rate`` (load that slows both cancels); the figures are
those ratios times the calibration rate, and ``throughput`` is their median: "images/s on this
runtime when the reference runs at its calibration rate". ``throughput_spread`` is the
interquartile range of the per-round figures (same unit), and ``throughput_raw`` the median of the
model's own rounds, uncalibrated (what a plain timer would report). Two trials timed under
different load are comparable through the ratio; two processes through the one calibration rate.
Measured on 2 shared cores (docs/benchmarks.md, "Throughput objective") the ratio ranked a search's
trials as well as the plain median did once every measurement warmed the allocator
(:func:`warm_allocator`; before that, worse: the reference, a small CNN, was timed cold in some
processes), and it costs the reference's timing in every measurement, so calibration is off by
default; it is for machines whose load changes between trials.

A trial measures it before training, on the untrained model: a runtime's speed depends on the
graph and its shapes, not on the weights' values, so that is the trial's figure (its per-epoch
reports, which early stopping's rungs read, carry it too, every trial's on its deploy runtime), and
it is measured again at the end only when training moved the trial's k (the shapes changed).

Layers: the runtime a model is timed on (a ``torch.export`` program, an onnxruntime session) is
made by the engine (``runner.engine.deploy``, beside the exporters), which this package may not import.
The engine hands it in as a :class:`Deployment` whose ``prepare`` turns a model and a batch into a
callable that runs that batch once; :func:`use_deployment` sets it for the current context (a trial
process sets it once, from its space's ``deploy`` section). Without one, the model is timed eager
on the batch it is given, with torch's current threads: how ``get_objective("throughput")`` works on
its own. The timing and calibration arithmetic here know no runtime, so they are tested on their own.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from objectives._inference import inference

Run = Callable[[], object]  # runs the prepared model on its batch once (and waits for the result)
Prepare = Callable[[nn.Module, torch.Tensor, int], Run]  # (eval model, batch, threads) -> Run

CALIBRATION_ROUNDS = 15  # the reference alone, once per run and deployment
MIN_ROUNDS = 5  # interleaved rounds at each measurement, at least ...
MAX_ROUNDS = 25  # ... and at most,
MIN_TIME_S = 0.15  # going on until this much time is spent timing (2x or 4x as long repeats no closer: docs/benchmarks.md)
CHUNK_S = 0.02  # each timed call is repeated to last about this long (a short call is all timer noise)
WARMUP = 2  # untimed calls of each runtime first (allocations, lazy initialisation, caches)
#: The largest threshold glibc's malloc raises itself to (DEFAULT_MMAP_THRESHOLD_MAX on 64 bits).
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


def eager_prepare(model: nn.Module, batch: torch.Tensor, threads: int) -> Run:
    """The eval module itself, without autograd (torch's threads are set around the timing)."""
    sync = (lambda: torch.cuda.synchronize(batch.device)) if batch.is_cuda else (lambda: None)

    def run() -> object:
        with torch.no_grad():
            out = model(batch)
        sync()
        return out

    return run


@dataclass(frozen=True)
class Deployment:
    """Where and how a model is timed: ``prepare`` makes the runtime, the rest says what it is fed.

    ``batch_size`` None times the batch the measure is given; ``threads`` None keeps torch's current
    count. ``calibrate`` False times the model alone (``throughput`` is then the raw figure)."""

    runtime: str = "eager"
    batch_size: int | None = None
    threads: int | None = None
    device: str = "cpu"
    prepare: Prepare = field(default=eager_prepare, compare=False)
    calibrate: bool = True

    def key(self, shape: Sequence[int]) -> tuple:
        """What a calibration is valid for: the runtime, the batch shape, threads and device."""
        return (self.runtime, tuple(shape), self.threads, self.device)


_DEPLOYMENT: ContextVar[Deployment | None] = ContextVar("cellsparse_deployment", default=None)


def use_deployment(deployment: Deployment) -> None:
    """Time ``throughput`` with ``deployment`` from now on in this context (a trial process: for good)."""
    _DEPLOYMENT.set(deployment)


@contextlib.contextmanager
def deployed(deployment: Deployment) -> Iterator[Deployment]:
    """``deployment`` inside the block only."""
    token = _DEPLOYMENT.set(deployment)
    try:
        yield deployment
    finally:
        _DEPLOYMENT.reset(token)


def current_deployment() -> Deployment:
    """The deployment set for this context; eager, on the given batch, without one."""
    return _DEPLOYMENT.get() or Deployment()


# ---------------------------------------------------------------------------------------------
# The reference and the arithmetic


def reference_model(in_channels: int, num_classes: int = 5) -> nn.Module:
    """The fixed reference: a small dense CNN (three stride-2 3x3 convolutions, 16-32-64 channels,
    global pooling, a linear head) with fixed weights, so every process times the same network.
    Its work grows with the image's area, as the models it is compared with do."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(max(1, p[0].numel())))
    return net.eval()


@dataclass(frozen=True)
class Throughput:
    """One measurement: the calibrated figure, its spread, and what it was made from."""

    images_per_s: float  # calibrated (the raw figure when there is no reference)
    spread: float  # interquartile range of the per-round figures, images/s
    raw_images_per_s: float  # the model's own median rate
    reference_images_per_s: float | None  # the reference's median rate in these rounds
    calibration_rate: float | None  # the reference's best rate at calibration
    rounds: int

    def figures(self, name: str = "throughput") -> dict[str, float]:
        """The objective's value and its extras, as trials.csv and metrics.json carry them."""
        return {name: self.images_per_s, f"{name}_spread": self.spread, f"{name}_raw": self.raw_images_per_s}


def _iqr(values: np.ndarray) -> float:
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def calibrated(model_rates: Sequence[float], reference_rates: Sequence[float] | None,
               calibration_rate: float | None) -> Throughput:
    """The calibration arithmetic. Per round i: ``figure_i = model_i / reference_i * calibration_rate``;
    the value is the median figure, the spread their interquartile range. Without a reference (or a
    calibration rate) the figures are the model's own rates."""
    model = np.asarray(model_rates, dtype=float)
    if model.size == 0 or not np.all(np.isfinite(model)) or np.any(model <= 0):
        raise ValueError(f"throughput needs positive rates from at least one round, got {model_rates!r}")
    raw = float(np.median(model))
    if reference_rates is None or calibration_rate is None:
        return Throughput(raw, _iqr(model), raw, None, None, int(model.size))
    reference = np.asarray(reference_rates, dtype=float)
    if reference.shape != model.shape or np.any(reference <= 0) or not calibration_rate > 0:
        raise ValueError("calibration needs one positive reference rate per round and a positive calibration rate, "
                         f"got {reference_rates!r} and {calibration_rate!r}")
    figures = model / reference * calibration_rate
    return Throughput(float(np.median(figures)), _iqr(figures), raw, float(np.median(reference)),
                      float(calibration_rate), int(model.size))


# ---------------------------------------------------------------------------------------------
# Timing


def _seconds(run: Run, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def _calls_per_round(run: Run) -> int:
    """Warm ``run`` up and choose how many calls one timed chunk holds (about ``CHUNK_S``)."""
    for _ in range(WARMUP - 1):
        run()
    once = _seconds(run, 1)
    return max(1, min(100, math.ceil(CHUNK_S / max(once, 1e-6))))


def interleaved_rates(runs: Sequence[Run], batch_size: int, *, min_rounds: int = MIN_ROUNDS,
                      max_rounds: int = MAX_ROUNDS, min_time_s: float = MIN_TIME_S) -> np.ndarray:
    """Images/s of each run per round: an array (rounds, len(runs)).

    Every round times each run once (a chunk of calls of about ``CHUNK_S``; with several runs, after
    one untimed call that brings it back into the caches the other run used), in alternating order
    (forward, then backward), so a change of load between rounds reaches every run alike; each run
    is timed warm, as it runs alone when deployed, and as the calibration times the reference.
    Rounds go on until ``min_time_s`` has passed, between ``min_rounds`` and ``max_rounds``."""
    if not runs or min_rounds < 1 or max_rounds < min_rounds or batch_size < 1:
        raise ValueError(f"need runs, 1 <= min_rounds <= max_rounds and batch_size >= 1, got {len(runs)} runs, "
                         f"rounds {min_rounds}..{max_rounds}, batch_size {batch_size}")
    calls = [_calls_per_round(run) for run in runs]
    rows: list[list[float]] = []
    start = time.perf_counter()
    while len(rows) < min_rounds or (len(rows) < max_rounds and time.perf_counter() - start < min_time_s):
        order = range(len(runs)) if len(rows) % 2 == 0 else reversed(range(len(runs)))
        row = [0.0] * len(runs)
        for i in order:
            if len(runs) > 1:
                runs[i]()  # untimed: the other run has just evicted this one's weights and buffers from the caches
            row[i] = batch_size / _seconds(runs[i], calls[i])
        rows.append(row)
    return np.asarray(rows, dtype=float)


def warm_allocator() -> None:
    """Put the C allocator in the state a process reaches once it has freed a large block, whatever
    ran before in this one.

    glibc serves an allocation above its mmap threshold (128 KiB at first) with fresh pages, and
    raises the threshold (up to 32 MiB) only when such a block is freed. Until then every large
    tensor a CPU forward makes costs page faults, so the same model timed first in a process ran
    slower than after other work (docs/benchmarks.md, "The throughput objective and the allocator"):
    the figure depended on the trial's history.
    Freeing one block of the largest size glibc adapts to sets both thresholds as that history
    would. Its pages are never touched, so it costs one mmap; other allocators ignore it."""
    block = torch.empty(GLIBC_MMAP_THRESHOLD_MAX - (64 << 10), dtype=torch.uint8)
    del block


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def deploy_batch(images: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``batch_size`` images made from ``images`` (repeated as needed); ``images`` itself for None."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"throughput needs a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
    if batch_size is None or batch_size == images.shape[0]:
        return images.contiguous()
    reps = math.ceil(batch_size / images.shape[0])
    return images.repeat(reps, 1, 1, 1)[:batch_size].contiguous()


# A process's references, prepared once per deployment key, and the calibration rate of each key:
# set from the run (set_calibration) or, without one, measured here once.
_REFERENCES: dict[tuple, Run] = {}
_CALIBRATIONS: dict[tuple, float] = {}


def _reference_run(deployment: Deployment, shape: Sequence[int], device: torch.device, threads: int) -> Run:
    key = deployment.key(shape)
    if key not in _REFERENCES:
        net = reference_model(int(shape[1])).to(device)
        images = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0)).to(device)
        _REFERENCES[key] = deployment.prepare(net, images, threads)
    return _REFERENCES[key]


def measure_calibration(deployment: Deployment, shape: Sequence[int]) -> float:
    """The reference's best rate (images/s) over ``CALIBRATION_ROUNDS`` rounds alone, on ``deployment``
    at batch ``shape`` (N, C, H, W): what the engine measures once per run."""
    threads = deployment.threads or torch.get_num_threads()
    if deployment.device == "cpu":
        warm_allocator()
    with _torch_threads(deployment.threads):
        run = _reference_run(deployment, shape, torch.device(deployment.device), threads)
        rates = interleaved_rates([run], int(shape[0]), min_rounds=CALIBRATION_ROUNDS, max_rounds=CALIBRATION_ROUNDS)
    return float(rates[:, 0].max())


def set_calibration(deployment: Deployment, shape: Sequence[int], rate: float) -> None:
    """Use ``rate`` as the calibration rate of ``deployment`` at batch ``shape`` in this process."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"a calibration rate must be a positive number of images/s, got {rate!r}")
    _CALIBRATIONS[deployment.key(shape)] = float(rate)


def _calibration(deployment: Deployment, shape: Sequence[int]) -> float:
    key = deployment.key(shape)
    if key not in _CALIBRATIONS:
        _CALIBRATIONS[key] = measure_calibration(deployment, shape)
    return _CALIBRATIONS[key]


def measure_throughput(model: nn.Module, images: torch.Tensor, deployment: Deployment | None = None) -> Throughput:
    """Time ``model`` as ``deployment`` (default: the current one) runs it, interleaved with the reference.

    ``images`` supply the batch (repeated up to ``deployment.batch_size``); they are moved to the
    deployment's device, and the model with them when it lives elsewhere (a copy: the caller's
    model is left where it is). Eval mode, no autograd, the model's modes restored afterwards."""
    deployment = deployment or current_deployment()
    device = torch.device(deployment.device)
    batch = deploy_batch(images, deployment.batch_size).to(device)
    first = next(iter(model.parameters()), None)
    if first is not None and first.device != device:
        model = copy.deepcopy(model).to(device)
    threads = deployment.threads or torch.get_num_threads()
    if device.type == "cpu":
        warm_allocator()
    with _torch_threads(deployment.threads), inference(model):
        run = deployment.prepare(model, batch, threads)
        if not deployment.calibrate:
            rates = interleaved_rates([run], len(batch))
            return calibrated(rates[:, 0], None, None)
        calibration_rate = _calibration(deployment, batch.shape)
        reference = _reference_run(deployment, batch.shape, device, threads)
        rates = interleaved_rates([run, reference], len(batch))
    return calibrated(rates[:, 0], rates[:, 1], calibration_rate)


def throughput_figures(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """The registered measure: ``throughput`` with its extras, on the current deployment."""
    return measure_throughput(model, images).figures()
