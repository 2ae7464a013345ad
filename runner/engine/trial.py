"""Train and measure one config: the training loop both backends run. Plain PyTorch, no Ray or Optuna.

    result = run_trial(config, data=dataset, trial_dir=Path("runs/cells/trials/3"),
                       objectives=["accuracy", "flops"], seed=0 + 3)

What it does, top to bottom:

1. build the model from the config (``build_model``), and its k rule when the model has a k;
2. put the data on the trial's device once (:func:`place_data` says when it stays on the host),
   then train with AdamW (weight decay on weight matrices and conv kernels only), a linear warm-up
   then a cosine decay per step, loss = cross-entropy (with label smoothing) + the model's auxiliary
   loss (selector training), on augmented batches (flips and 90-degree rotations: cells have no
   orientation) when ``augment``, gathered and augmented on the device (:func:`training_batches`);
   forward and loss under bf16 autocast when the config asks for it and the trial runs on CUDA
   (:func:`effective_precision`), everything else (backward, optimiser, evaluation, measurement) in fp32;
3. after each training step the k rule reads the batch's cross-entropy and may move k (loss_trend
   decides a few times per epoch on a smoothed loss, schedule at epoch ends); after each epoch:
   validation accuracy, FLOPs at the current k, the k rule's decision points that epoch
   (``k_trace``) and, for per-image rules, the spread of the per-image counts, then a ``report``
   call with every objective (Ray checks each report for every metric); history.json is rewritten
   each epoch, so a trial stopped early keeps its curve;
4. at the end: every objective measured on the final model (accuracy is validation accuracy; FLOPs
   are counted at the final k on a validation batch), test accuracy as extra information only;
   throughput only when training moved k: it is timed as deployed before training, on the
   untrained model (the speed of a runtime depends on the graph and its shapes, not the weights);
5. the files of ``runs/<name>/trials/<n>/``: config.json, metrics.json, history.json, model.pt,
   meta.json (what rebuilding the model and feeding it needs) and looked_at.npz (a few validation
   images with what the model used in each, for the report).

A loss that becomes NaN or infinite raises :class:`NonFiniteLossError`; the backends record the
trial as FAILED and the search goes on.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellsparse.files import write_atomic
from cellsparse.rundir import CONFIG_FILE, HISTORY_FILE, LOOKED_AT_FILE, META_FILE, METRICS_FILE, WEIGHTS_FILE
from objectives import count_flops, count_params, get_objective, measure_objective
from runner.data import augment_batch
from search_space.build import build_model
from search_space.k_rules import make_k_rule
from search_space.spec import PRECISIONS
from search_space.strategies import CellClassifier

GRAD_CLIP = 1.0  # max global grad norm: cheap insurance against one bad step killing a trial
EVAL_CHUNK = 256  # images per forward when evaluating
MEASURE_BATCH = 32  # validation images the cost objectives are measured on (FLOPs are per image)
LOOKED_AT = 8  # validation images saved with their used maps for the report
# Images the pre-training budget check and an infeasible trial's costs are measured on: as many as a
# trained trial's cost objectives, so a latency budget means the same per-image figure for both.
CHECK_BATCH = MEASURE_BATCH
# Share of a CUDA device's free memory the trial's data may take to live there (see place_data).
DEVICE_DATA_SHARE = 0.25

Report = Callable[[dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the config diverged (too high lr, unstable selector)."""


# ---------------------------------------------------------------------------------------------
# Small pure helpers


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from ~0 to ``base_lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class TrialData:
    """The three splits where the trial reads them: all on its device (``resident``) or all on the host.

    Images are as the dataset stores them (uint8 or float32, see ``runner.data.CellDataset``);
    ``normalise`` turns a batch into model input where the batch is (on the device)."""

    train_x: torch.Tensor  # (N, C, H, W)
    train_y: torch.Tensor  # (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    resident: bool
    normalise: Callable[[torch.Tensor], torch.Tensor]


_SPLIT_TENSORS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def place_data(data: Any, device: str | torch.device, *, budget_bytes: int | None = None) -> TrialData:
    """The trial's splits (images and labels), copied to ``device`` once when they fit, else left on the host.

    The rule: data already on ``device`` (always so on the CPU) is used as it is. Otherwise all three
    splits move together, before the first epoch, when their bytes are at most ``budget_bytes``: by
    default ``DEVICE_DATA_SHARE`` (a quarter) of the CUDA device's free memory at that moment, so
    the model, its activations and other trials packed on the same GPU (``search.resources.gpu``
    below 1) keep the rest; a device without a memory query (not CUDA) takes them whatever their
    size. Over the budget they stay on the host and each training batch and evaluation chunk is
    copied over on its own. Either way the numbers are the same: only where the copy happens differs.
    """
    device = torch.device(device)
    tensors = {name: getattr(data, name) for name in _SPLIT_TENSORS}
    normalise = data.normalise
    if all(_on(t, device) for t in tensors.values()):
        return TrialData(**tensors, resident=True, normalise=normalise)
    if budget_bytes is None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget_bytes = int(DEVICE_DATA_SHARE * free)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if budget_bytes is not None and size > budget_bytes:
        return TrialData(**tensors, resident=False, normalise=normalise)
    return TrialData(**{name: t.to(device) for name, t in tensors.items()}, resident=True, normalise=normalise)


def training_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: bool,
    device: str | torch.device,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled training batches (x, y) on ``device``, augmented when ``augment``, then
    ``normalise``d into model input (the stored images, uint8 at large sizes, travel as they are).

    ``generator`` (a CPU generator) draws the epoch's order when the first batch is asked for, then
    one augmentation draw per batch: the same draws in the same order wherever the data lives, so a
    seeded trial sees the same batches on every device. Data on ``device`` (see :func:`place_data`)
    is gathered there: only indices travel, the epoch's order once and each batch's B augmentation
    choices. Data on the host is gathered there and each batch copied over, then augmented on the device.
    """
    order = torch.randperm(len(images), generator=generator).to(images.device)  # (N,)
    for index in order.split(batch_size):
        x, y = images[index].to(device), labels[index].to(device)  # no copy when the data is resident
        if augment:
            x = augment_batch(x, generator)
        yield (x if normalise is None else normalise(x)), y


def effective_precision(precision: str, device: str | torch.device) -> str:
    """The precision a trial trains in: ``precision`` on a CUDA device that supports it, else fp32.

    bf16 is off on the CPU (CPU autocast is slower than fp32 on most CPUs, and the same seed must
    give the same numbers there) and on GPUs without native bf16 (before Ampere: emulated bf16 is
    slower than fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp32"


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context the training forward and loss run in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


Prepare = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, device: str, prepare: Prepare = _identity) -> torch.Tensor:
    """Arg-max predictions in eval mode, ``EVAL_CHUNK`` images at a time: (N, C, H, W) -> (N,).

    ``prepare`` turns a chunk of stored images into model input (``CellDataset.normalise``), so a
    split is never converted whole."""
    model.eval()
    out = [model(prepare(images[i : i + EVAL_CHUNK].to(device))).argmax(dim=-1).cpu()
           for i in range(0, len(images), EVAL_CHUNK)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str,
             prepare: Prepare = _identity) -> float:
    if len(images) == 0:
        return float("nan")
    return float((predict(model, images, device, prepare) == labels.cpu()).float().mean())


def current_k(model: CellClassifier) -> float | None:
    k = model.k
    return None if k is None else float(k)


@torch.no_grad()
def probe_losses(
    model: CellClassifier, x: torch.Tensor, y: torch.Tensor, *, k: int, probe: tuple[int, int]
) -> tuple[float, float]:
    """Cross-entropy of one batch in eval mode at each of the two k in ``probe`` (what a k rule weighs
    a change by: the same images, so the difference is the k's, not the batch's); back in train mode at ``k``."""
    model.eval()
    losses = []
    for value in probe:
        model.set_k(value)
        losses.append(F.cross_entropy(model(x), y).item())
    model.set_k(k)
    model.train()
    return losses[0], losses[1]


@torch.no_grad()
def k_record(model: CellClassifier, rule: Any, images: torch.Tensor, first_step: int = 0) -> dict[str, Any]:
    """What the k rule did, for the history and metrics: its decision points from ``first_step`` on
    (``k_trace``: step, k, smoothed loss) and, for per-image rules, the spread of the per-image
    counts on ``images`` in eval mode (``k_std``, ``k_min``, ``k_max``)."""
    if rule is None:
        return {}
    record: dict[str, Any] = {"k_trace": [point for point in rule.trace if point["step"] >= first_step]}
    if rule.per_image:
        model.eval()
        model(images)
        counts = model._last_counts.float()  # (B,) kept per image, set by that forward (CountedKModel)
        record.update(k_std=float(counts.std(correction=0)), k_min=float(counts.min()), k_max=float(counts.max()))
    return record


@torch.no_grad()
def used_fraction(model: CellClassifier, images: torch.Tensor) -> float:
    """Mean fraction of each image the model looked at (its ``used_map``), in eval mode."""
    model.eval()
    return float(model.used_map(images).float().mean())


def to_display(images: torch.Tensor) -> np.ndarray:
    """Normalised images -> uint8 per image and channel (min-max to 0..255), for showing in the report:
    8 bits are all a screen shows, and a quarter of float32's bytes at 512 px."""
    x = images.detach().float().cpu()
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-8) * 255).round().numpy().astype(np.uint8)


def _as_list(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().flatten().tolist()
    if isinstance(value, np.ndarray):
        return value.flatten().tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def _write_json(path: Path, data: Any) -> None:
    """Whole or not at all: metrics.json's presence marks a finished trial, so a torn write must not."""
    write_atomic(path, json.dumps(data, indent=2, default=_as_list) + "\n")


def check_batch(in_channels: int, size: int) -> torch.Tensor:
    """The fixed (seeded) batch a config's budgets are checked on before training, and on which an
    infeasible trial's costs are recorded: per-image rules select by content, so both must see the
    same images or a config rejected as over budget could be recorded under it."""
    return torch.randn(CHECK_BATCH, in_channels, size, size, generator=torch.Generator().manual_seed(0))


def throughput_in(values: dict[str, float]) -> dict[str, float]:
    """``throughput`` and its extras among ``values`` (none when it is not measured)."""
    if "throughput" not in values:
        return {}
    return {key: values[key] for key in ("throughput", *get_objective("throughput").extras) if key in values}


def measure(model: torch.nn.Module, names: Sequence[str], *, val_accuracy: float, images: torch.Tensor) -> dict[str, float]:
    """Every objective in ``names`` on ``model``: accuracy is the given validation accuracy, the
    cost objectives are measured on ``images`` (a validation batch, already on the model's device)."""
    values: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            values[name] = float(val_accuracy)
        else:
            values.update(measure_objective(name, model, images))  # its extras too (throughput_spread)
    return values


_DECAYED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on the weights of linear and conv layers; none on norms, biases, and
    learned tokens or position tables, whose pull toward zero is a pull toward a wrong prior."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, _DECAYED) and m.weight is not None}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


# ---------------------------------------------------------------------------------------------
# The trial


def run_trial(
    config: dict[str, Any],
    *,
    data: Any,
    trial_dir: Path,
    objectives: Sequence[str],
    augment: bool = True,
    device: str = "cpu",
    threads: int = 1,
    seed: int = 0,
    report: Report | None = None,
) -> dict[str, Any]:
    """Train ``config`` on ``data`` (a ``runner.data.CellDataset``), measure it, save it to ``trial_dir``.

    ``seed`` seeds everything random in the trial (callers pass the space seed + the trial number),
    so the same seed gives the same numbers on CPU. ``threads`` sets torch's intra-op threads.
    Returns the metrics (also written to metrics.json): every objective by name, plus
    ``val_accuracy``, ``test_accuracy``, ``k_final``, ``params_count``, ``epochs``, ``train_time_s``
    and ``precision`` (the one the trial trained in: the config's on CUDA, fp32 elsewhere).
    """
    start = time.perf_counter()
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    _write_json(trial_dir / CONFIG_FILE, config)
    torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)  # batch order and augmentation

    # -- model, k rule, optimiser ------------------------------------------------------------
    model = build_model(config, data.in_channels, data.num_classes, data.image_size).to(device)
    epochs, batch_size = int(config["epochs"]), int(config["batch_size"])
    steps_per_epoch = math.ceil(len(data.train_y) / batch_size)
    bounds = model.k_bounds()
    rule = None
    if bounds is not None:
        rule = make_k_rule(config, k_init=int(round(model.k)), k_bounds=bounds, epochs=epochs, steps_per_epoch=steps_per_epoch)
        model.set_k(rule.k)
    # fused: one kernel per step on CUDA instead of a dozen; on the CPU the default (unchanged numbers)
    fused = True if torch.device(device).type == "cuda" else None
    optimizer = torch.optim.AdamW(param_groups(model, float(config["weight_decay"])), lr=float(config["lr"]), fused=fused)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(float(config.get("warmup_epochs", 0.0)) * steps_per_epoch))
    smoothing = float(config.get("label_smoothing", 0.0))
    precision = effective_precision(config.get("precision", "fp32"), device)  # configs from before the key: fp32

    splits = place_data(data, device)  # once: batches are gathered and augmented where the data lives
    val_batch = splits.normalise(splits.val_x[:MEASURE_BATCH].to(device))
    params_count = count_params(model)
    # Objective values reported each epoch; the costly ones are measured once now, again at the end.
    # Throughput is timed as deployed now and kept: a runtime's speed depends on the graph and its
    # shapes, not on the weights' values; only a k that training moved (new shapes) is timed again.
    k_start = None if rule is None else rule.k  # the count every image runs at (a per-image rule's cap)
    latest = measure(model, [n for n in objectives if n not in ("accuracy", "flops")], val_accuracy=0.0,
                     images=val_batch)

    # -- training ----------------------------------------------------------------------------
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(epochs):
        model.train()
        epoch_start, loss_sum, class_loss_sum, seen = time.perf_counter(), 0.0, 0.0, 0
        for x, y in training_batches(splits.train_x, splits.train_y, batch_size=batch_size, generator=generator,
                                     augment=augment, device=device, normalise=splits.normalise):
            lr = lr_at(step, base_lr=float(config["lr"]), warmup_steps=warmup_steps, total_steps=total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(precision, device):
                logits = model(x)  # (B, num_classes)
                class_loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
                loss = class_loss + model.auxiliary_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            # One device-to-host read per step, after the step is queued (a GPU need not wait for the
            # check before running backward); a non-finite loss fails the trial, whose weights are never saved.
            loss_value, class_loss_value = torch.stack([loss.detach().float(), class_loss.detach().float()]).tolist()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"training loss became {loss_value} at epoch {epoch + 1}/{epochs}, step {step} "
                    f"(lr={lr:.3g}); the config diverged"
                )
            loss_sum += loss_value * len(y)
            class_loss_sum += class_loss_value * len(y)
            seen += len(y)
            if rule is not None:  # the k rule follows the cross-entropy: auxiliary terms (REINFORCE) can be negative
                probe = rule.probe(step)
                probed = None if probe is None else probe_losses(model, x, y, k=rule.k, probe=probe)
                model.set_k(rule.update(step, class_loss_value, probed))
            step += 1
        train_loss = loss_sum / max(1, seen)
        class_loss = class_loss_sum / max(1, seen)

        val_accuracy = accuracy(model, splits.val_x, splits.val_y, device, splits.normalise)
        latest["accuracy"] = val_accuracy
        latest["flops"] = count_flops(model, val_batch)
        row = {
            "epoch": epoch + 1,
            "steps": step,  # training steps so far: places the k rule's decision points (k_trace) within epochs
            "train_loss": train_loss,
            "class_loss": class_loss,
            "val_accuracy": val_accuracy,
            "k": current_k(model),  # k at the epoch's end (per-image rules: mean over the last batch)
            **k_record(model, rule, val_batch, first_step=step - steps_per_epoch),
            "flops": latest["flops"],
            "lr": lr,
            "epoch_time_s": time.perf_counter() - epoch_start,
        }
        history.append(row)
        _write_json(trial_dir / HISTORY_FILE, history)  # each epoch: a trial stopped early keeps its curve
        if report is not None:
            report({**row, **{name: latest[name] for name in objectives}})

    # -- final measurements (at the final k) -------------------------------------------------
    final_val = history[-1]["val_accuracy"] if history else accuracy(model, splits.val_x, splits.val_y, device,
                                                                      splits.normalise)
    timed = throughput_in(latest) if rule is None or rule.k == k_start else {}
    values = {**measure(model, [n for n in objectives if n not in timed], val_accuracy=final_val, images=val_batch),
              **timed}
    metrics: dict[str, Any] = {
        **values,
        "val_accuracy": final_val,
        "test_accuracy": accuracy(model, splits.test_x, splits.test_y, device, splits.normalise),
        "flops": values["flops"] if "flops" in values else count_flops(model, val_batch),
        "k_final": current_k(model),
        **{key: value for key, value in k_record(model, rule, val_batch).items() if key != "k_trace"},
        "used_fraction": used_fraction(model, val_batch),
        "params_count": params_count,
        "epochs": epochs,
        "train_time_s": time.perf_counter() - start,
        "precision": precision,
        "feasible": True,
    }
    save_trial(trial_dir, model=model, data=data, config=config, metrics=metrics, history=history, device=device)
    return metrics


def save_trial(
    trial_dir: Path,
    *,
    model: CellClassifier,
    data: Any,
    config: dict[str, Any],
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    device: str,
) -> None:
    """Write what the report and export read: weights, how to rebuild and feed them, what the model used."""
    trial_dir = Path(trial_dir)
    model.eval()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, trial_dir / WEIGHTS_FILE)
    meta = {
        "strategy": config["strategy"],
        "in_channels": data.in_channels,
        "num_classes": data.num_classes,
        "image_size": data.image_size,
        "class_names": list(data.class_names),
        "mean": _as_list(data.mean),
        "std": _as_list(data.std),
        "modality": data.modality,
        "source": data.source,
        "k_final": metrics.get("k_final"),
    }
    _write_json(trial_dir / META_FILE, meta)
    _write_json(trial_dir / HISTORY_FILE, history)

    images = data.images("val", slice(0, LOOKED_AT))
    with torch.no_grad():
        used = model.used_map(images.to(device)).float().cpu().numpy()
        preds = predict(model, images, device).numpy()
    np.savez_compressed(
        trial_dir / LOOKED_AT_FILE,
        images=to_display(images),  # (N, C, H, W) uint8
        used=used.astype(np.float16),  # (N, H, W) in [0, 1]
        labels=data.val_y[:LOOKED_AT].cpu().numpy(),
        preds=preds,
        class_names=np.array(list(data.class_names)),
    )
    _write_json(trial_dir / METRICS_FILE, metrics)  # last: its presence marks a finished trial dir


def record_infeasible(
    config: dict[str, Any],
    *,
    shape: tuple[int, int, int],
    num_classes: int,
    trial_dir: Path,
    objectives: Sequence[str],
    constraints: dict[str, float],
) -> dict[str, Any]:
    """Measure an over-budget config without training it: accuracy 0, its cost objectives as built.

    ``shape`` is (in_channels, image_size, image_size); costs are measured on :func:`check_batch`,
    the batch the budgets were checked on.
    """
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    _write_json(trial_dir / CONFIG_FILE, config)
    in_channels, size, _ = shape
    model = build_model(config, in_channels, num_classes, size)
    model.eval()
    dummy = check_batch(in_channels, size)
    values = measure(model, objectives, val_accuracy=0.0, images=dummy)
    metrics = {
        **values,
        "val_accuracy": 0.0,
        "test_accuracy": None,
        "flops": values["flops"] if "flops" in values else count_flops(model, dummy),
        "k_final": current_k(model),
        "params_count": count_params(model),
        "epochs": 0,
        "train_time_s": 0.0,
        "feasible": False,
        "constraints": constraints,
    }
    _write_json(trial_dir / METRICS_FILE, metrics)
    return metrics
