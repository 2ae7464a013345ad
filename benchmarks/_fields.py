"""What the field benchmarks share: the designs at field scale, one training run, where a model looks,
and every design's throughput timed side by side.

A *set* is synthetic fields (``FieldSet``: frame side, target side, difficulty, split sizes; the
ground-truth crop around the target is its own set) or real frames from an ``.npz`` file. A *design*
is a config with no training keys; every design trains with the same loop, budget and seeds
(``TRAINING``: bench_headroom's, so its dense runs and these are the same experiment). Runs go to a
pool of processes (``--jobs``), each run's figures are saved to a JSON file as soon as it ends, and a
run already in that file is not trained again: a stopped invocation resumes where it was.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from _doc import own_command, stamp
from bench_headroom import MODEL, TRAINING, crop_around_target
from bench_selection import selection_share

from objectives.throughput import _torch_threads, deploy_batch, interleaved_rates
from runner.data import SYNTHETIC_CLASSES, CellDataset, load_dataset
from runner.data.dataset import SPLITS, cell_dataset
from runner.data.fields import generate_fields
from runner.engine.checkpoint import load_trained
from runner.engine.deploy import PREPARE
from runner.engine.trial import run_trial
from search_space import build_model, default_config

SPARSE = ("sparse_topk", "tnet_traversal", "span_pyramid")
#: Every design label in the order tables list them.
LABELS = ("dense native", "dense shrink 2x", "dense shrink 4x", "dense_vit", "tnet_traversal", "tnet_traversal, no prior",
          "tnet_traversal, GroupNorm", "span_pyramid", "sparse_topk", "sparse_topk, no prior", "ground-truth crop")
PAPER_SHARE = 0.25  # SparseAttnNet keeps about 15% of a cell image's pixels; its k here is 25% of the target's
MAX_TOKENS = 256  # ... up to 8 tokens per channel of width 32, where attention pairs cost about what the MLPs do


@dataclass(frozen=True)
class FieldSet:
    """Synthetic fields as ``runner.data.fields`` draws them (seed 0), or real frames from ``npz``."""

    size: int = 256
    target: int = 32
    difficulty: float = 0.3
    train: int = 2000
    val: int = 500
    test: int = 500
    npz: str | None = None

    @property
    def name(self) -> str:
        if self.npz:
            return Path(self.npz).name
        return f"fields {self.size} px, target {self.target} px"

    def cell_share(self) -> float:
        """The target's share of the frame (its disc's area over the frame's); None-like 0 for real frames."""
        return 0.0 if self.npz else math.pi * (self.target / 2) ** 2 / self.size**2


@dataclass(frozen=True)
class Design:
    """A label, a config without training keys, and whether it sees the ground-truth crop."""

    label: str
    config: dict = field(hash=False)
    crop: bool = False

    @property
    def strategy(self) -> str:
        return self.config["strategy"]


def field_designs(size: int, target: int) -> list[Design]:
    """Every design at field scale, sized for a ``size``-px frame and a ``target``-px cell.

    - dense CNN (bench_headroom's network) at native size, shrunk 2x and 4x, and on the ground-truth
      crop (a ``2 * target`` square around the cell: the ceiling of a perfect selector);
    - tnet_traversal: 3 levels, child views 0.45 of their parent, so the last level's crop is about
      1.6 target sides when the target is an eighth of the frame; base resolution 5/32 of the frame
      (the last crop at 0.77 of native); BatchNorm per level and the foreground prior on the location
      module (GroupNorm, or no prior, left it at chance on fields: docs/benchmarks.md); and its
      ablations, without the prior and with GroupNorm;
    - span_pyramid: 8-px patches (``size**2 / 64`` tokens, where windows save), patches kept by their
      foreground (six times the target's share of them, at most 7.5%), width 64, two layers;
    - sparse_topk: a stride-4 coarse map (its cost scales with the frame), k a quarter of the
      target's pixels (the paper keeps about 15% of a cell image) up to ``MAX_TOKENS``, width 32 so
      attention is not most of the model, the foreground prior on its ranking; and its ablation
      without the prior;
    - dense ViT, 16-px patches on the 2x copy (fields.yaml's cheaper choice: at native size it costs
      0.7x the dense CNN, and on 128-px fields it stayed at chance at native size too).
    """
    cell = math.pi * (target / 2) ** 2
    tnet = {"strategy": "tnet_traversal", "base_resolution": min(48, max(8, round(size * 5 / 32))), "grid_size": 4,
            "levels": 3, "overlap": 0.45, "regions": 1, "width": 8, "stages": 3, "norm": "batch",
            "location_prior": "foreground", "k_rule": "fixed"}
    topk = {"strategy": "sparse_topk", "coarse_stride": 4, "coarse_channels": 8,
            "k_fraction": min(PAPER_SHARE * cell, MAX_TOKENS) / size**2, "token_content": "patch3", "embed_dim": 32,
            "num_heads": 2, "depth": 2, "score_prior": "foreground", "k_rule": "fixed"}
    return [
        Design("dense native", {"strategy": "dense_cnn", **MODEL}),
        Design("dense shrink 2x", {"strategy": "dense_cnn", **MODEL, "input_size": size // 2}),
        Design("dense shrink 4x", {"strategy": "dense_cnn", **MODEL, "input_size": size // 4}),
        Design("tnet_traversal", tnet),
        Design("tnet_traversal, no prior", {**tnet, "location_prior": "none"}),
        Design("tnet_traversal, GroupNorm", {**tnet, "norm": "group"}),
        Design("span_pyramid", {"strategy": "span_pyramid", "patch_size": 8, "keep_score": "foreground",
                                "patch_embed": "conv", "keep_fraction": min(0.075, max(0.02, 6 * cell / size**2)),
                                "window": 4, "embed_dim": 64, "num_heads": 4, "depth": 2, "k_rule": "fixed"}),
        Design("sparse_topk", topk),
        Design("sparse_topk, no prior", {**topk, "score_prior": "none"}),
        Design("dense_vit", {"strategy": "dense_vit", "patch_size": 16, "embed_dim": 64, "num_heads": 4, "depth": 2,
                             "input_size": size // 2}),
        Design("ground-truth crop", {"strategy": "dense_cnn", **MODEL}, crop=True),
    ]


# ----- data, once per worker ------------------------------------------------------------------------
_DATA: dict[tuple, tuple[CellDataset, torch.Tensor | None]] = {}


def set_data(fields: FieldSet, crop: bool = False) -> tuple[CellDataset, torch.Tensor | None]:
    """The set's CellDataset and its test split's target masks (None for real frames and crops)."""
    key = (fields, crop)
    if key not in _DATA:
        if fields.npz:
            data = load_dataset(source="npz", path=fields.npz, train=fields.train or None, val=fields.val or None,
                                test=fields.test or None, seed=0)
            _DATA[key] = (data, None)
        else:
            sizes = {"train": fields.train, "val": fields.val, "test": fields.test}
            batches = {s: generate_fields(n, image_size=fields.size, target_size=fields.target,
                                          difficulty=fields.difficulty, seed=0, split=s) for s, n in sizes.items()}
            side = 2 * fields.target
            splits = {s: ((crop_around_target(b.images, b.boxes, side) if crop else b.images), b.labels)
                      for s, b in batches.items()}
            data = cell_dataset({s: splits[s] for s in SPLITS}, class_names=list(SYNTHETIC_CLASSES),
                                modality="brightfield", source="fields")
            _DATA[key] = (data, None if crop else batches["test"].cell_mask)
    return _DATA[key]


# ----- one run ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One training run: a design on a set with a seed (and overrides, e.g. a k rule)."""

    fields: FieldSet
    design: Design
    seed: int
    epochs: int
    tag: str = ""  # tells runs of one design apart when ``overrides`` differ
    overrides: tuple[tuple[str, object], ...] = ()

    def key(self) -> str:
        """Names the run in a saved invocation: a design's label stands for its config (a changed config
        needs a new label, or a new ``--out``)."""
        return json.dumps([asdict(self.fields), self.design.label, self.tag, self.seed, self.epochs])


def train(task: Task, threads: int = 1) -> dict:
    """Train one task with the project's trial loop; its accuracy, FLOPs, plateau tail and selection."""
    torch.set_num_threads(threads)
    data, masks = set_data(task.fields, task.design.crop)
    config = {**default_config(task.design.strategy), **task.design.config, **TRAINING, "epochs": task.epochs,
              **dict(task.overrides)}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_trial(config, data=data, trial_dir=Path(tmp), objectives=["accuracy", "flops"], seed=task.seed,
                            threads=threads)
        history = json.loads((Path(tmp) / "history.json").read_text())
        inside = random = None
        if masks is not None and task.design.strategy in SPARSE:
            model = load_trained(Path(tmp)).model
            with torch.no_grad():
                used = torch.cat([model.used_map(data.images("test", slice(i, i + 50)))
                                  for i in range(0, len(data.test_x), 50)])
            inside, random = selection_share(used, masks)
    return {"key": task.key(), "set": task.fields.name, "label": task.design.label, "tag": task.tag,
            "strategy": task.design.strategy, "seed": task.seed, "config": config, "flops": float(metrics["flops"]),
            "val": float(metrics["val_accuracy"]), "test": float(metrics["test_accuracy"]),
            "k_final": metrics.get("k_final"), "tail": [h["val_accuracy"] for h in history[-3:]],
            "inside": inside, "random": random, "seconds": time.perf_counter() - start}


def run_tasks(tasks: list[Task], *, jobs: int, threads: int, saved: list[dict],
              save: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Train every task not already in ``saved`` (``jobs`` at once), handing all results so far to
    ``save`` as each run ends; return the results of ``tasks``."""
    done = {r["key"] for r in saved}
    results = list(saved)
    todo = [t for t in tasks if t.key() not in done]
    if todo:
        print(f"{len(todo)} runs to train ({len(tasks) - len(todo)} already saved), {jobs} at once", flush=True)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
            futures = [pool.submit(train, t, threads) for t in todo]
            for future in as_completed(futures):
                r = future.result()
                results.append(r)
                if save is not None:
                    save(results)
                sel = "" if r["inside"] is None else f"  selection {r['inside'] / r['random']:.1f}x"
                print(f"{r['set']:<28s} {r['label']:<18s} {r['tag']:<12s} seed {r['seed']}  test {r['test']:.3f}  "
                      f"val {r['val']:.3f}  {r['flops'] / 1e6:7.2f} MFLOPs{sel}  {r['seconds']:.0f}s", flush=True)
    wanted = {t.key() for t in tasks}
    return [r for r in results if r["key"] in wanted]


def add_run_arguments(parser: argparse.ArgumentParser, *, seeds: list[int], epochs: int, train: int,
                      val: int = 300, test: int = 500) -> None:
    """The flags every field benchmark takes: the data's size and difficulty, seeds, epochs, how many runs
    at once, where the invocation is saved, and ``--results``/``--no-write``."""
    parser.add_argument("--difficulty", type=float, default=0.3)
    parser.add_argument("--train", type=int, default=train)
    parser.add_argument("--val", type=int, default=val)
    parser.add_argument("--test", type=int, default=test)
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each in a process of its own")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=None, help="save this invocation here (after every run; resumes)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")


def invocation(args: argparse.Namespace, script: str, tasks: list[Task], **extra: object) -> tuple[dict, dict]:
    """Train ``tasks`` (``args.jobs`` at once, resuming from ``args.out``, saving there after every run)
    and return this invocation's record (stamp, settings, runs, wall_s, ``extra``) and the saved one."""
    previous = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("results", "out")}
    record: dict = {"stamp": stamp(own_command(script)), "settings": settings, **extra}
    start = time.perf_counter() - previous.get("wall_s", 0.0)

    def save(runs: list[dict]) -> None:
        if args.out:
            save_json(args.out, {**record, "runs": runs, "wall_s": time.perf_counter() - start})

    record["runs"] = run_tasks(tasks, jobs=args.jobs, threads=args.threads, saved=previous.get("runs", []), save=save)
    record["wall_s"] = time.perf_counter() - start
    save(record["runs"])
    return record, previous


def save_json(path: Path, value: object) -> None:
    """Write ``value`` to ``path`` through a temporary file: a stopped run never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# ----- summaries -------------------------------------------------------------------------------------
def by_label(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in runs:
        out.setdefault(r["label"], []).append(r)
    return out


SHRINKS = ("dense shrink 4x", "dense shrink 2x", "dense native")


def shrink_at(by: dict[str, list[dict]], flops: float) -> tuple[float, str]:
    """Mean test accuracy (%) of the dense CNN at ``flops``: interpolated in log FLOPs between its sizes."""
    points = sorted((statistics.fmean(r["flops"] for r in by[label]), statistics.fmean(100 * r["test"] for r in by[label]),
                     label) for label in SHRINKS if label in by)
    if not points:
        return math.nan, "no dense runs"
    if flops <= points[0][0]:
        return points[0][1], f"{points[0][2]} (costs {points[0][0] / flops:.1f}x more)"
    for (f0, a0, l0), (f1, a1, l1) in zip(points, points[1:], strict=False):
        if flops <= f1:
            w = math.log(flops / f0) / math.log(f1 / f0)
            return a0 + w * (a1 - a0), f"between {l0} and {l1}"
    return points[-1][1], f"{points[-1][2]} (costs {flops / points[-1][0]:.1f}x less)"


def plateau(runs: list[dict]) -> float:
    """Mean range of validation accuracy over the last three epochs, in points (near 0: a plateau)."""
    return 100 * statistics.fmean(max(r["tail"]) - min(r["tail"]) for r in runs)


# ----- throughput, every design side by side ------------------------------------------------------------
def throughputs(models: dict[str, torch.nn.Module], images: torch.Tensor, *, batch_size: int = 64, threads: int = 2,
                runtimes: tuple[str, ...] = ("onnxruntime", "pt2"), min_time_s: float = 20.0) -> dict[str, dict[str, float]]:
    """Images/s of every model on every runtime at ``batch_size``, timed in the same interleaved rounds.

    Each figure is the median over rounds; the rounds alternate order, so a change of load reaches
    every model alike and ratios between models hold even on a shared machine."""
    batch = deploy_batch(images, batch_size)
    runs, names = [], []
    with _torch_threads(threads):
        for label, model in models.items():
            model.eval()
            for runtime in runtimes:
                with torch.no_grad():
                    runs.append(PREPARE[runtime](model, batch, threads))
                names.append((label, runtime))
        rates = interleaved_rates(runs, len(batch), min_rounds=5, max_rounds=50, min_time_s=min_time_s)
    out: dict[str, dict[str, float]] = {}
    for (label, runtime), column in zip(names, rates.T, strict=True):
        out.setdefault(label, {})[runtime] = float(statistics.median(column))
    return out


def deployable(config: dict, *, channels: int, classes: int, size: int, k: float | None = None) -> torch.nn.Module:
    """The design as built for deployment (weights seeded 0; speed does not depend on them), at ``k``."""
    torch.manual_seed(0)
    model = build_model(config, channels, classes, size)
    if k is not None and model.k_bounds() is not None:
        model.set_k(int(round(k)))
    return model.eval()
