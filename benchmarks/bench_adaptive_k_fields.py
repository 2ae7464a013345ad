"""Adaptive k on fields: does the loss_trend rule save FLOPs against fixed k and against a schedule?

One sparse design of ``_fields.field_designs`` (``--design``, default span_pyramid) trains on
synthetic fields with each k rule, the same seed, data and budget:

- ``fixed``: k stays at the design's initial k;
- ``schedule``: k falls on a fixed timetable from the initial k to ``k_min_fraction`` of it (the
  control that needs no signal from training);
- ``loss_trend``: k falls while the smoothed training loss allows (within ``k_tolerance``).

Per seed, paired: the test-accuracy difference (points) and the FLOPs saving, ``1 - FLOPs(loss_trend)
/ FLOPs(other)``, at each run's final k, against each of the two. Reported: the mean over seeds with
the 95% interval (t) of each. The claim that learning k pays needs the accuracy interval to include
0 (or lie above it) while the saving's interval lies above 0, against both controls.

    python benchmarks/bench_adaptive_k_fields.py [--design span_pyramid] [--seeds 0 1 2 3 4] --out RUN.json
    python benchmarks/bench_adaptive_k_fields.py --results RUN.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, write_section  # noqa: E402
from _fields import FieldSet, Task, add_run_arguments, field_designs, invocation, plateau  # noqa: E402
from bench_headroom import interval  # noqa: E402

RULES = ("fixed", "schedule", "loss_trend")


def tasks_for(args: argparse.Namespace) -> list[Task]:
    fields = FieldSet(size=args.size, target=args.target, difficulty=args.difficulty, train=args.train, val=args.val,
                      test=args.test)
    design = next(d for d in field_designs(args.size, args.target) if d.label == args.design)
    return [Task(fields, design, seed, args.epochs, tag=rule, overrides=(("k_rule", rule),))
            for rule in RULES for seed in args.seeds]


def paired(runs: list[dict], other: str) -> dict[str, tuple[float, float]]:
    """loss_trend against ``other`` per seed: accuracy difference (points) and FLOPs saving, each (mean, half)."""
    by = {(r["tag"], r["seed"]): r for r in runs}
    seeds = sorted(s for t, s in by if t == "loss_trend" and (other, s) in by)
    if not seeds:
        return {"acc": (math.nan, math.nan), "saved": (math.nan, math.nan), "seeds": 0}
    acc = [100 * (by["loss_trend", s]["test"] - by[other, s]["test"]) for s in seeds]
    saved = [100 * (1 - by["loss_trend", s]["flops"] / by[other, s]["flops"]) for s in seeds]
    return {"acc": interval(acc), "saved": interval(saved), "seeds": len(seeds)}


def reading(runs: list[dict]) -> str:
    """What the paired figures rest on: how often loss_trend stopped at its floor, and how many seeds
    stayed near chance under every rule (they make the spread bimodal)."""
    trend = [r for r in runs if r["tag"] == "loss_trend"]
    fixed = {r["seed"]: r for r in runs if r["tag"] == "fixed"}
    at_floor = sum(1 for r in trend if r["seed"] in fixed and r["k_final"] <= max(1, round(
        r["config"]["k_min_fraction"] * fixed[r["seed"]]["k_final"])))
    chance = 1 / 5 + 0.05  # five classes, and five points of slack
    stuck = [s for s in sorted({r["seed"] for r in runs}) if all(r["test"] <= chance for r in runs if r["seed"] == s)]
    return (f"loss_trend ended at its floor (k_min_fraction of the initial k) in {at_floor} of {len(trend)} seeds, "
            f"and {len(stuck)} of {len({r['seed'] for r in runs})} seeds stayed within 5 points of chance under every "
            "rule: the intervals carry that split")


def section(inv: dict) -> str:
    a, runs = inv["settings"], inv["runs"]
    rows = []
    for rule in RULES:
        mine = [r for r in runs if r["tag"] == rule]
        if not mine:
            continue
        test, half = interval([100 * r["test"] for r in mine])
        rows.append([rule, f"{test:.1f} ± {half:.1f}", f"{statistics.fmean(r['flops'] for r in mine) / 1e6:.2f}",
                     ", ".join(f"{r['k_final']:g}" for r in sorted(mine, key=lambda r: r["seed"])),
                     ", ".join(f"{100 * r['test']:.1f}" for r in sorted(mine, key=lambda r: r["seed"])),
                     f"{plateau(mine):.1f}", len(mine)])
    pairs = []
    for other in ("fixed", "schedule"):
        p = paired(runs, other)
        if p["seeds"]:
            pairs.append([f"loss_trend - {other}", f"{p['acc'][0]:+.1f} ± {p['acc'][1]:.1f}",
                          f"{p['saved'][0]:.0f}% ± {p['saved'][1]:.0f}", p["seeds"]])
    short = "; ".join(f"against {row[0].split(' - ')[1]}: accuracy {row[1]} points, FLOPs saved {row[2]}" for row in pairs)
    short += ". " + reading(runs)
    return (f"{inv['stamp']} {len(runs)} runs, {a['jobs']} at once, {a['threads']} torch thread(s) each; "
            f"{inv['wall_s'] / 60:.0f} min.\n\n"
            f"**In short:** {a['design']} on {a['size']}-px synthetic fields (target {a['target']} px), loss_trend "
            f"over {len(a['seeds'])} seeds, paired per seed with 95% intervals: {short}.\n\n"
            f"{a['design']}'s field config (`benchmarks/_fields.py`) with each k rule's default settings, "
            f"{a['epochs']} epochs, {a['train']} train / {a['val']} val / {a['test']} test fields, the project's trial "
            "loop; FLOPs at each run's final k.\n\n"
            + markdown_table(["k rule", "test % (95% CI)", "MFLOPs (final k)", "final k per seed", "test % per seed",
                              "last-3 val range (pts)", "seeds"], rows)
            + "\n\n" + markdown_table(["paired per seed", "accuracy difference, points (95% CI)",
                                       "FLOPs saved (95% CI)", "seeds"], pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--design", default="span_pyramid", help="a sparse design label of _fields.field_designs")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--target", type=int, default=16)
    add_run_arguments(parser, seeds=[0, 1, 2, 3, 4], epochs=15, train=2000)
    parser.add_argument("--results", type=Path, default=None, help="train nothing: the section from a saved invocation")
    args = parser.parse_args()
    if args.results:
        inv = json.loads(args.results.read_text())
    else:
        inv = invocation(args, "bench_adaptive_k_fields.py", tasks_for(args))[0]
    body = section(inv)
    print(body)
    if not args.no_write:
        write_section("adaptive_k_fields", "Adaptive k on fields: loss_trend against fixed k and a schedule", body)


if __name__ == "__main__":
    main()
