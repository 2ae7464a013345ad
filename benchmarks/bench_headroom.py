"""Headroom: is a data set in the regime where looking at part of the frame can pay?

Selection competes with the cheapest way to skip pixels: a smaller copy of the whole frame. It can
only win where that copy loses the class. This script trains one dense CNN (dense_cnn, width 8,
4 stages, stride-2 stem: the same network at every size) with the project's trial loop on:

- the frame at native size;
- the frame shrunk 2x and 4x (``input_size``: area interpolation inside the model, so the network
  is the same and only what it sees changes);
- on synthetic fields, the ground-truth crop: a ``2 * target_size`` square around the target cell
  at native resolution (what a perfect selector would hand the same CNN): the ceiling.

Each with the same data, budget and seeds; test accuracy mean over seeds with its 95% interval (t
distribution), validation accuracy of the last three epochs (a plateau shows as a flat tail), FLOPs
per image and training time. A 4x shrink that costs under 3 test points says the set is not in the
regime (a dense model on a small copy will hold the front); the synthetic fields are built to lose
at least 5.

    python benchmarks/bench_headroom.py --sets fields [npz:PATH ...] [--seeds 0 1 2] [--jobs 2] [--out RUN.json]
    python benchmarks/bench_headroom.py --results RUN.json [RUN2.json ...]   # one section from saved runs

A set is ``fields`` (synthetic fields, ``--size`` / ``--target``) or ``npz:PATH`` (real frames,
square, at their native size; see README, "Real field data"). ``--train`` caps the train split
(real sets: a class-stratified, seeded pick).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from runner.data import SYNTHETIC_CLASSES, CellDataset, describe_dataset, load_dataset  # noqa: E402
from runner.data.dataset import SPLITS, cell_dataset  # noqa: E402
from runner.data.fields import generate_fields  # noqa: E402
from runner.engine.trial import run_trial  # noqa: E402
from search_space import default_config  # noqa: E402

MODEL = {"width": 8, "stages": 4, "stem_stride": 2, "blocks_per_stage": 1}
TRAINING = {"batch_size": 32, "lr": 0.004, "weight_decay": 0.05, "warmup_epochs": 0.5, "label_smoothing": 0.0}
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t(0.975, n - 1)
SYNTHETIC_TARGET, REAL_REGIME = 5.0, 3.0  # points a 4x shrink must cost: built into fields / the regime line

_DATA: dict[str, CellDataset] = {}  # each worker's data sets, made once


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def field_splits(args: argparse.Namespace, seed: int = 0) -> dict[str, object]:
    """The synthetic fields' splits (images, labels, boxes) as generate_fields draws them."""
    sizes = {"train": args.train or 2000, "val": args.val, "test": args.test}
    return {split: generate_fields(n, image_size=args.size, target_size=args.target, difficulty=args.difficulty,
                                   seed=seed, split=split) for split, n in sizes.items()}


def crop_around_target(images: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """(N, C, side, side) crops centred on each target (edge-clamped), at native resolution."""
    size = images.shape[-1]
    half = side // 2
    out = torch.empty(len(images), images.shape[1], side, side, dtype=images.dtype)
    for i, (x, y, _) in enumerate(boxes.tolist()):
        left = min(max(int(round(x)) - half, 0), size - side)
        top = min(max(int(round(y)) - half, 0), size - side)
        out[i] = images[i, :, top : top + side, left : left + side]
    return out


def dataset(name: str, args: argparse.Namespace) -> CellDataset:
    """A set by name: ``fields``, ``fields-crop`` (the ground-truth crops) or ``npz:PATH``."""
    if name not in _DATA:
        if name.startswith("npz:"):
            _DATA[name] = load_dataset(source="npz", path=name[4:], train=args.train or None, val=args.val or None,
                                       test=args.test or None, seed=0)
        else:
            splits = field_splits(args)
            side = 2 * args.target
            pick = (lambda b: (crop_around_target(b.images, b.boxes, side), b.labels)) if name == "fields-crop" else (
                lambda b: (b.images, b.labels))
            _DATA[name] = cell_dataset({s: pick(splits[s]) for s in SPLITS}, class_names=list(SYNTHETIC_CLASSES),
                                       modality="brightfield", source=name)
    return _DATA[name]


def train(set_name: str, variant: str, input_size: int | None, seed: int, args: argparse.Namespace) -> dict:
    """One run of the dense CNN on one set and size, in this worker."""
    data = dataset(set_name, args)
    config = {**default_config("dense_cnn"), **MODEL, **TRAINING, "epochs": args.epochs}
    if input_size is not None and input_size != data.image_size:
        config["input_size"] = input_size
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_trial(config, data=data, trial_dir=Path(tmp), objectives=["accuracy", "flops"], seed=seed,
                            threads=args.threads)
        history = json.loads((Path(tmp) / "history.json").read_text())
    return {"set": set_name.replace("-crop", ""), "variant": variant, "seed": seed, "input": input_size or data.image_size,
            "frame": data.image_size, "flops": metrics["flops"], "val": metrics["val_accuracy"],
            "test": metrics["test_accuracy"], "tail": [h["val_accuracy"] for h in history[-3:]],
            "seconds": time.perf_counter() - start}


def plan(args: argparse.Namespace) -> list[tuple[str, str, int | None]]:
    """(set, variant, input size) for every run but the seed."""
    runs = []
    for name in args.sets:
        size = args.size if name == "fields" else _npz_size(name[4:])
        runs += [(name, "native", None), (name, "shrink 2x", size // 2), (name, "shrink 4x", size // 4)]
        if name == "fields":
            runs.append(("fields-crop", "ground-truth crop", None))
    return runs


def _npz_size(path: str) -> int:
    return describe_dataset(source="npz", path=path)[2]


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval (t distribution; 0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def summarise(results: list[dict]) -> tuple[str, dict[str, float]]:
    """The table of one set and its 4x-shrink cost in test points."""
    rows, native, drops = [], None, {}
    for variant in ("native", "shrink 2x", "shrink 4x", "ground-truth crop"):
        runs = [r for r in results if r["variant"] == variant]
        if not runs:
            continue
        test, half = interval([100 * r["test"] for r in runs])
        if variant == "native":
            native = test
        tail = statistics.fmean(max(r["tail"]) - min(r["tail"]) for r in runs)
        drops[variant] = 0.0 if native is None else native - test
        drop = "" if variant == "native" else f"{test - native:+.1f}"
        seen = (f"{runs[0]['frame']} crop" if variant == "ground-truth crop"
                else f"{runs[0]['input']} of {runs[0]['frame']}")
        rows.append([variant, seen, f"{runs[0]['flops'] / 1e6:.1f}",
                     f"{100 * statistics.fmean(r['val'] for r in runs):.1f}", f"{test:.1f} ± {half:.1f}", drop,
                     f"{100 * tail:.1f}", f"{statistics.fmean(r['seconds'] for r in runs):.0f}", len(runs)])
    header = ["model sees", "px", "MFLOPs", "val %", "test % (95% CI)", "vs native", "last-3 val range (pts)",
              "s/run", "seeds"]
    return markdown_table(header, rows), drops


def verdict(name: str, drops: dict[str, float]) -> str:
    drop = drops.get("shrink 4x", 0.0)
    if name == "fields":
        ok = "meets" if drop >= SYNTHETIC_TARGET else "misses"
        return f"A 4x shrink costs {drop:.1f} test points: {ok} the {SYNTHETIC_TARGET:.0f}-point target the fields are built for."
    if drop < REAL_REGIME:
        cost = f"costs {drop:.1f} test points" if drop >= 0 else f"is {-drop:.1f} test points more accurate than native"
        return (f"A 4x shrink {cost} (a cost under {REAL_REGIME:.0f}): **not in the regime**: a dense model on a 4x "
                "smaller copy holds the accuracy, so selection has little to win here.")
    return f"A 4x shrink costs {drop:.1f} test points (>= {REAL_REGIME:.0f}): in the regime where selection can pay."


def section(saved: list[dict]) -> str:
    """The headroom section from saved invocations (each: command, settings, machine line, results)."""
    parts, short = [], []
    for run in saved:
        a = run["settings"]
        parts.append(f"{run['stamp']} {len(run['results'])} runs, {a['jobs']} at once, {a['threads']} torch thread(s) "
                     f"each, {run['wall_s'] / 60:.0f} min in all; {a['epochs']} epochs"
                     + (f", train capped at {a['train']}" if a["train"] else "") + ".")
        for name in a["sets"]:
            table, drops = summarise([r for r in run["results"] if r["set"] == name])
            title = (f"Synthetic fields ({a['size']} px, target {a['target']} px, difficulty {a['difficulty']:g})"
                     if name == "fields" else f"`{Path(name[4:]).name}`")
            parts.append(f"### {title}\n\n{table}\n\n{verdict(name, drops)}")
            short.append(f"{'synthetic fields' if name == 'fields' else Path(name[4:]).name}: a 4x shrink changes "
                         f"test accuracy by {-drops.get('shrink 4x', 0.0):+.1f} points"
                         + (f", the ground-truth crop gains {-drops['ground-truth crop']:.1f}" if "ground-truth crop" in drops
                            else ""))
    return ("**In short:** " + "; ".join(short) + ".\n\n"
            f"The same dense CNN (dense_cnn {MODEL}, AdamW lr {TRAINING['lr']}, batch {TRAINING['batch_size']}, cosine "
            "decay) on each set at native size, shrunk 2x and 4x inside the model (area interpolation), and on synthetic "
            "fields on the ground-truth crop around the target (the ceiling a perfect selector would give it). Test "
            "accuracy is the mean over seeds with its 95% interval; 'last-3 val range' is how much validation accuracy "
            "still moved over the last three epochs (near 0: trained to a plateau).\n\n" + "\n\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["fields"], help="fields and/or npz:PATH")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=256, help="synthetic fields: frame side")
    parser.add_argument("--target", type=int, default=32, help="synthetic fields: target cell size in pixels")
    parser.add_argument("--difficulty", type=float, default=0.3)
    parser.add_argument("--train", type=int, default=0, help="train images (synthetic, default 2000) or cap (real)")
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in a process of its own (same numbers)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=None, help="also save this invocation's figures as JSON here")
    parser.add_argument("--results", type=Path, nargs="+", default=None,
                        help="train nothing: write the section from invocations saved with --out (several sets, "
                             "several machines or days, one section)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    if args.results:
        saved = [json.loads(path.read_text()) for path in args.results]
    else:
        saved = [collect(args)]
        if args.out:
            args.out.write_text(json.dumps(saved[0], indent=1))
    body = section(saved)
    print(body)
    if not args.no_write:
        write_section("headroom", "Headroom: what a shrink costs (is a data set in the regime?)", body)


def collect(args: argparse.Namespace) -> dict:
    """Train every planned run (``--jobs`` at once) and return them with what reproduces them."""
    command = own_command("bench_headroom.py")
    tasks = [(s, v, i, seed) for s, v, i in plan(args) for seed in args.seeds]
    spawn = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    results = []
    with ProcessPoolExecutor(args.jobs, mp_context=spawn, initializer=_init_worker, initargs=(args.threads,)) as pool:
        futures = [pool.submit(train, s, v, i, seed, args) for s, v, i, seed in tasks]
        for future in futures:
            r = future.result()
            results.append(r)
            print(f"{r['set']:<20s} {r['variant']:<18s} seed {r['seed']}  test {r['test']:.3f}  val {r['val']:.3f}  "
                  f"{r['flops'] / 1e6:7.1f} MFLOPs  {r['seconds']:.0f}s", flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("results", "out")}
    return {"stamp": stamp(command), "settings": settings, "wall_s": time.perf_counter() - start, "results": results}


if __name__ == "__main__":
    main()
