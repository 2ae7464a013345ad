"""The goal on fields: can a sparse design match the dense model at native size for a fraction of its cost?

On a set of frames (synthetic fields, or real frames from an .npz), every design of
``_fields.field_designs`` trains with the same loop, budget and seeds: the dense CNN at native size,
shrunk 2x and 4x, the dense ViT, each sparse design, and on synthetic fields the dense CNN on the
ground-truth crop (the ceiling). Then, in one process on a machine left to itself, every deployable
design is timed side by side (onnxruntime and .pt2 at batch 64, 2 threads, interleaved rounds).

The goal, per sparse design (mean test accuracy over seeds):

- within 1 point of the best dense model at native size (dense CNN or ViT) at no more than 25% of its FLOPs;
- at least 3 points above the dense CNN that costs the same FLOPs (a shrink: accuracy interpolated
  between the shrinks in log FLOPs; a design cheaper than the 4x shrink is held to the 4x shrink);
- at least 2x the native dense CNN's throughput (the faster runtime of each).

On synthetic fields, where each sparse design looks: the share of its ``used_map`` on the target's
mask over the target's share of the frame (1x: random; the target is 5x).

    python benchmarks/bench_fields_goal.py [--size 256 --target 32] [--seeds 0 1 2] [--epochs 15] [--jobs 2] --out RUN.json
    python benchmarks/bench_fields_goal.py --set npz:PATH --train 1500 --out REAL.json
    python benchmarks/bench_fields_goal.py --results RUN.json REAL.json     # the sections from saved invocations

``--out`` is written after every run; started again with the same ``--out``, an invocation trains
only what is missing. ``--headroom RUN.json`` takes the dense CNN runs (native, shrinks, ground-truth
crop) from a ``bench_headroom.py --out`` invocation with the same data and budget instead of training
them again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from runner.data import describe_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, write_section  # noqa: E402
from _fields import (  # noqa: E402
    LABELS,
    SPARSE,
    Design,
    FieldSet,
    Task,
    by_label,
    deployable,
    field_designs,
    invocation,
    plateau,
    save_json,
    shrink_at,
    throughputs,
)
from bench_headroom import interval  # noqa: E402

WITHIN, ABOVE, FLOPS_SHARE, SPEEDUP, SELECTION = 1.0, 3.0, 0.25, 2.0, 5.0
HEADROOM_LABELS = {"native": "dense native", "shrink 2x": "dense shrink 2x", "shrink 4x": "dense shrink 4x",
                   "ground-truth crop": "ground-truth crop"}


def field_set(args: argparse.Namespace) -> FieldSet:
    if args.set.startswith("npz:"):
        return FieldSet(size=0, target=0, train=args.train, val=args.val, test=args.test, npz=args.set[4:])
    return FieldSet(size=args.size, target=args.target, difficulty=args.difficulty, train=args.train or 2000,
                    val=args.val, test=args.test)


def designs_for(fields: FieldSet, only: list[str] | None) -> list[Design]:
    if fields.npz:
        size = _frame(fields)[2]
        designs = [d for d in field_designs(size, _real_target(fields.npz, size)) if not d.crop]
    else:
        designs = field_designs(fields.size, fields.target)
    return [d for d in designs if not only or d.label in only]


def _real_target(path: str, size: int) -> int:
    """The target side the sparse designs are sized for on real frames: the median side of the train
    split's boxes (``train_boxes``, x0 y0 x1 y1, as the field builders write them), else 0.28 of the
    frame (a white cell of about 136 px in a 480-px smear window; docs/benchmarks.md, real field data)."""
    with np.load(path, allow_pickle=False) as arrays:
        if "train_boxes" not in arrays.files:
            return max(8, round(0.28 * size))
        boxes = arrays["train_boxes"].astype(float)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return max(8, min(size // 2, round(float(np.median(sides)))))


def from_headroom(path: Path, tasks: list[Task], fields: FieldSet) -> list[dict]:
    """The dense CNN runs of a bench_headroom invocation with this data and budget, as this script's results."""
    saved = json.loads(path.read_text())
    a = saved["settings"]
    if fields.npz:
        name = f"npz:{fields.npz}"
        same = name in a["sets"] and (a["train"], a["val"], a["test"]) == (fields.train, fields.val, fields.test)
    else:
        name = "fields"
        same = (a["size"], a["target"], a["difficulty"], a["train"] or 2000, a["val"], a["test"]) == (
            fields.size, fields.target, fields.difficulty, fields.train, fields.val, fields.test)
    if not same:
        raise SystemExit(f"--headroom {path}: its data ({', '.join(a['sets'])}, {a['size']} px, train {a['train'] or 2000}, "
                         f"val {a['val']}, test {a['test']}) is not this invocation's")
    by = {(HEADROOM_LABELS[r["variant"]], r["seed"]): r for r in saved["results"] if r["set"] == name}
    out = []
    for task in tasks:
        r = by.get((task.design.label, task.seed))
        if r is not None and a["epochs"] == task.epochs:
            out.append({"key": task.key(), "set": fields.name, "label": task.design.label, "tag": "",
                        "strategy": "dense_cnn", "seed": task.seed, "config": task.design.config, "flops": r["flops"],
                        "val": r["val"], "test": r["test"], "k_final": None, "tail": r["tail"], "inside": None,
                        "random": None, "seconds": r["seconds"], "from": str(path.name)})
    return out


def measure_speed(designs: list[Design], runs: list[dict], channels: int, classes: int, size: int,
                  threads: int) -> dict[str, dict[str, float]]:
    """Every deployable design's images/s, side by side (k at its runs' final k, seed 0's)."""
    models = {}
    for d in designs:
        if d.crop:
            continue
        mine = [r for r in runs if r["label"] == d.label]
        k = mine[0]["k_final"] if mine else None
        models[d.label] = deployable(d.config, channels=channels, classes=classes, size=size, k=k)
    images = torch.randn(64, channels, size, size, generator=torch.Generator().manual_seed(0))
    return throughputs(models, images, batch_size=64, threads=threads)


# ----- the sections ----------------------------------------------------------------------------------
def goal_table(inv: dict) -> tuple[str, list[str]]:
    """One set's table of every design and the goal's verdict per sparse design."""
    by = by_label(inv["runs"])
    speed = inv.get("throughput") or {}
    best_rate = {label: max(rates.values()) for label, rates in speed.items()}
    native = [label for label in ("dense native", "dense_vit") if label in by]
    best = max(native, key=lambda label: statistics.fmean(r["test"] for r in by[label]), default=None)
    rows, verdicts = [], []
    order = [label for label in LABELS if label in by]
    for label in order:
        runs = by[label]
        test, half = interval([100 * r["test"] for r in runs])
        flops = statistics.fmean(r["flops"] for r in runs)
        rate = best_rate.get(label)
        rates = speed.get(label, {})
        sel = [r["inside"] / r["random"] for r in runs if r["inside"] is not None]
        rel_speed = (f"{rate / best_rate['dense native']:.2f}x" if rate and "dense native" in best_rate else "")
        rows.append([label, f"{flops / 1e6:.1f}", f"{100 * statistics.fmean(r['val'] for r in runs):.1f}",
                     f"{test:.1f} ± {half:.1f}",
                     " / ".join(f"{rates[rt]:,.0f}" if rt in rates else "-" for rt in ("onnxruntime", "pt2")),
                     rel_speed, f"{statistics.fmean(sel):.1f}x" if sel else "", f"{plateau(runs):.1f}",
                     f"{statistics.fmean(r['seconds'] for r in runs):.0f}", len(runs)])
        if runs[0]["strategy"] in SPARSE and best is not None:
            verdicts.append(goal_verdict(label, by, best, best_rate))
    header = ["design", "MFLOPs", "val %", "test % (95% CI)", "images/s b64 (ort / pt2)", "speed vs dense native",
              "selection on target (x random)", "last-3 val range (pts)", "s/run", "seeds"]
    return markdown_table(header, rows), verdicts


def goal_verdict(label: str, by: dict[str, list[dict]], best: str, best_rate: dict[str, float]) -> str:
    """Each part of the goal for one sparse design, with by how much it is met or missed."""
    acc = statistics.fmean(100 * r["test"] for r in by[label])
    flops = statistics.fmean(r["flops"] for r in by[label])
    best_acc = statistics.fmean(100 * r["test"] for r in by[best])
    best_flops = statistics.fmean(r["flops"] for r in by[best])
    shrink, where = shrink_at(by, flops)
    parts = [
        f"{acc - best_acc:+.1f} points against {best} ({'within' if acc >= best_acc - WITHIN else 'not within'} "
        f"{WITHIN:g}) at {100 * flops / best_flops:.0f}% of its FLOPs "
        f"({'<=' if flops <= FLOPS_SHARE * best_flops else '>'} {100 * FLOPS_SHARE:.0f}%)",
        f"{acc - shrink:+.1f} points against the dense CNN at its FLOPs ({where}; target +{ABOVE:g})",
    ]
    if label in best_rate and "dense native" in best_rate:
        ratio = best_rate[label] / best_rate["dense native"]
        parts.append(f"{ratio:.2f}x the native dense CNN's throughput (target {SPEEDUP:g}x)")
    met = (acc >= best_acc - WITHIN and flops <= FLOPS_SHARE * best_flops and acc - shrink >= ABOVE
           and best_rate.get(label, 0) >= SPEEDUP * best_rate.get("dense native", math.inf))
    return f"- **{label}**: {'meets' if met else 'misses'} the goal: " + "; ".join(parts) + "."


def goal_section(invocations: list[dict]) -> str:
    parts, short = [], []
    for inv in invocations:
        table, verdicts = goal_table(inv)
        met = [v.split("**")[1] for v in verdicts if ": meets" in v]
        short.append(f"{inv['set']}: " + (f"{', '.join(met)} meet(s) the goal" if met else "no sparse design meets the goal"))
        a = inv["settings"]
        parts.append(f"### {inv['set']}\n\n{inv['stamp']} {len(inv['runs'])} runs, {a['jobs']} at once, "
                     f"{a['threads']} torch thread(s) each; {a['epochs']} epochs, seeds {', '.join(map(str, a['seeds']))}"
                     + (f"; dense CNN runs from `{inv['headroom']}` (bench_headroom, same data and budget)"
                        if inv.get("headroom") else "")
                     + f". Throughput: {inv.get('throughput_note', 'not measured')}.\n\n{table}\n\n" + "\n".join(verdicts))
    return ("**In short:** " + "; ".join(short) + ".\n\n"
            "Every design trains with the project's trial loop, the same data, epochs, batch 32, AdamW lr 0.004, cosine "
            "decay and seeds (`benchmarks/_fields.py`: the configs and why). Test accuracy is the mean over seeds with its "
            "95% interval (t); 'last-3 val range' is how far validation accuracy still moved over the last three epochs "
            "(near 0: a plateau). Throughput: every deployable design in one process, onnxruntime and .pt2 at batch 64 "
            "with 2 threads, interleaved rounds, the median round; 'speed vs dense native' takes each design's faster "
            "runtime. The goal per sparse design: within 1 point of the best dense model at native size at no more than "
            "25% of its FLOPs, 3 points above the dense CNN at its FLOPs, 2x the native dense CNN's throughput.\n\n"
            + "\n\n".join(parts))


def selection_section(invocations: list[dict]) -> str | None:
    rows, short = [], []
    for inv in invocations:
        by = by_label(inv["runs"])
        for label in LABELS:
            runs = [r for r in by.get(label, []) if r["inside"] is not None]
            if not runs:
                continue
            ratio, half = interval([r["inside"] / r["random"] for r in runs])
            rows.append([inv["set"], label, f"{statistics.fmean(r['inside'] for r in runs):.3f}",
                         f"{statistics.fmean(r['random'] for r in runs):.4f}", f"{ratio:.1f} ± {half:.1f}x",
                         "meets" if ratio >= SELECTION else "misses", f"{100 * statistics.fmean(r['test'] for r in runs):.1f}",
                         ", ".join(f"{r['inside'] / r['random']:.1f}" for r in runs)])
            short.append(f"{label} {ratio:.1f}x")
    if not rows:
        return None
    return ("**In short:** on synthetic fields, the share of each sparse design's selection on the target against "
            "random selection: " + ", ".join(short) + f" (target {SELECTION:g}x).\n\n"
            "Each trained run of the goal's table, on the 500 test fields: the share of its `used_map` mass inside "
            "the target cell's mask, over the mask's share of the frame (what selection blind to the image gets). "
            "TNet's map counts each pixel at the best resolution a view saw it (the whole-image view is a low floor); "
            "span_pyramid's, the kept patches; sparse_topk's, the kept pixels.\n\n"
            + markdown_table(["set", "design", "used mass on target", "target share of frame", "ratio (95% CI)",
                              f"{SELECTION:g}x", "test %", "per seed"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="fields", help="fields (synthetic) or npz:PATH (real frames)")
    parser.add_argument("--size", type=int, default=256, help="synthetic fields: frame side")
    parser.add_argument("--target", type=int, default=32, help="synthetic fields: target cell side in pixels")
    parser.add_argument("--difficulty", type=float, default=0.3)
    parser.add_argument("--train", type=int, default=0, help="train images (synthetic, default 2000) or cap (real)")
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--designs", nargs="+", default=None, help="train only these design labels")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each in a process of its own")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--speed-threads", type=int, default=2, help="threads of the throughput timing")
    parser.add_argument("--no-speed", action="store_true", help="train only; time nothing")
    parser.add_argument("--headroom", type=Path, default=None, help="take the dense CNN runs from this bench_headroom --out")
    parser.add_argument("--out", type=Path, default=None, help="save this invocation here (after every run; resumes)")
    parser.add_argument("--results", type=Path, nargs="+", default=None,
                        help="train nothing: the sections from saved invocations")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    invocations = [json.loads(p.read_text()) for p in args.results] if args.results else [collect(args)]
    goal = goal_section(invocations)
    selection = selection_section(invocations)
    print(goal + ("\n\n" + selection if selection else ""))
    if not args.no_write:
        write_section("goal_fields", "The goal on fields: sparse designs against dense at native size, a shrink and a ViT",
                      goal)
        if selection:
            write_section("selection_fields", "Selection on the target in fields: where the sparse designs look", selection)


def collect(args: argparse.Namespace) -> dict:
    """Train what is missing (dense runs from ``--headroom`` count as done), then time every design."""
    fields = field_set(args)
    designs = designs_for(fields, args.designs)
    tasks = [Task(fields, d, seed, args.epochs) for d in designs for seed in args.seeds]
    if args.headroom and args.out:  # the headroom's runs join the saved ones before anything trains
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        have = {r["key"] for r in previous.get("runs", [])}
        runs = previous.get("runs", []) + [r for r in from_headroom(args.headroom, tasks, fields) if r["key"] not in have]
        save_json(args.out, {**previous, "runs": runs})
    record, previous = invocation(args, "bench_fields_goal.py", tasks, set=fields.name,
                                  headroom=args.headroom.name if args.headroom else None)
    for key in ("throughput", "throughput_note"):
        if key in previous:
            record[key] = previous[key]
    if not args.no_speed:
        record["throughput"] = measure_speed(designs, record["runs"], *_frame(fields), args.speed_threads)
        loads = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        record["throughput_note"] = f"timed {time.strftime('%Y-%m-%d %H:%M')}, load average before {loads}"
    if args.out:
        save_json(args.out, record)
    return record


def _frame(fields: FieldSet) -> tuple[int, int, int]:
    """(channels, classes, frame side) of the set."""
    if fields.npz:
        return describe_dataset(source="npz", path=fields.npz)
    return 3, 5, fields.size


if __name__ == "__main__":
    main()
