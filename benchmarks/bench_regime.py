"""The regime map: where does looking at part of the frame beat a dense model on a smaller copy?

Synthetic fields of one frame size (``--size``, default 128 px) with a target cell whose side goes
from about 0.8 of the frame down to an eighth (``--targets``): the target's share of the frame goes
from about 44% to about 1%, and its cues (granules 1-2 px, whatever the cell's size) stay as fine.
At every share, every design of ``_fields.field_designs`` sized for the smallest target trains with
the same loop, budget and seeds: the dense CNN shrunk 2x and 4x (the sparse designs cost between
the two; native size, 4x their cost, is not needed for the comparison), and each sparse
design at one fixed config (so the FLOPs budget is the same across the map). Per share and sparse
design:

    gap = test accuracy(sparse) - test accuracy(dense CNN at the same FLOPs)

with the dense accuracy interpolated in log FLOPs between its sizes (a sparse design cheaper than the
4x shrink is held to the 4x shrink, which costs more). The gap's 95% interval is over seeds (the
dense accuracy of the same seed taken at the design's FLOPs). Written to docs/benchmarks.md and as a
plot, ``docs/regime_map.svg``, that README shows.

    python benchmarks/bench_regime.py [--size 128] [--targets 96 64 40 24 16] [--seeds 0 1 2] [--epochs 10] --out RUN.json
    python benchmarks/bench_regime.py --results RUN.json          # the section and the plot from a saved invocation
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
from _fields import SPARSE, FieldSet, Task, add_run_arguments, by_label, field_designs, invocation, plateau, shrink_at  # noqa: E402
from bench_headroom import interval  # noqa: E402

SVG = Path(__file__).resolve().parents[1] / "docs" / "regime_map.svg"
COLOURS = {"sparse_topk": "#1f77b4", "tnet_traversal": "#d62728", "span_pyramid": "#2ca02c", "tnet_traversal, prior": "#ff7f0e"}


def tasks_for(args: argparse.Namespace) -> list[Task]:
    designs = [d for d in field_designs(args.size, min(args.targets))
               if not d.crop and d.label not in ("dense_vit", "dense native") and ", " not in d.label]
    if args.designs:
        designs = [d for d in designs if d.label in args.designs]
    out = []
    for target in args.targets:
        fields = FieldSet(size=args.size, target=target, difficulty=args.difficulty, train=args.train, val=args.val,
                          test=args.test)
        out += [Task(fields, d, seed, args.epochs) for d in designs for seed in args.seeds]
    return out


def share_of(runs: list[dict]) -> float:
    """The target's share of the frame, measured on the test masks (a sparse run's ``random``)."""
    shares = [r["random"] for r in runs if r["random"] is not None]
    return statistics.fmean(shares) if shares else math.nan


def gaps(runs: list[dict]) -> dict[str, list[dict]]:
    """Per sparse design, one point per share: the share, the gap (mean, half-width), accuracies, FLOPs."""
    by_set: dict[str, list[dict]] = {}
    for r in runs:
        by_set.setdefault(r["set"], []).append(r)
    out: dict[str, list[dict]] = {}
    for set_name, set_runs in by_set.items():
        by = by_label(set_runs)
        share = share_of(set_runs)
        for label in [label for label in by if label not in _fields_dense()]:
            mine = by[label]
            flops = statistics.fmean(r["flops"] for r in mine)
            per_seed = []
            for r in mine:
                same_seed = {lab: [x for x in by[lab] if x["seed"] == r["seed"]] for lab in by}
                dense, _ = shrink_at({lab: v for lab, v in same_seed.items() if v}, flops)
                per_seed.append(100 * r["test"] - dense)
            dense_mean, where = shrink_at(by, flops)
            gap, half = interval(per_seed)
            out.setdefault(label, []).append({
                "set": set_name, "share": share, "gap": gap, "half": half, "acc": statistics.fmean(100 * r["test"] for r in mine),
                "dense": dense_mean, "where": where, "flops": flops, "seeds": len(mine), "plateau": plateau(mine),
                "selection": statistics.fmean(r["inside"] / r["random"] for r in mine) if mine[0]["inside"] is not None else None,
                "shrink2": _mean_test(by.get("dense shrink 2x")), "shrink4": _mean_test(by.get("dense shrink 4x")),
            })
    for points in out.values():
        points.sort(key=lambda p: -p["share"])
    return out


def _fields_dense() -> tuple[str, ...]:
    return ("dense native", "dense shrink 2x", "dense shrink 4x")


def _mean_test(runs: list[dict] | None) -> float:
    return statistics.fmean(100 * r["test"] for r in runs) if runs else math.nan


def svg(curves: dict[str, list[dict]], path: Path) -> None:
    """Gap (points) against the target's share of the frame (log axis), one line per sparse design with
    its 95% interval as bars (a hand-written SVG: no plotting library is a dependency)."""
    w, h, pad = 680, 420, 60
    points = [p for ps in curves.values() for p in ps if math.isfinite(p["share"])]
    lo_s, hi_s = min(p["share"] for p in points) / 1.3, max(p["share"] for p in points) * 1.3
    lo_g = min(min(p["gap"] - p["half"] for p in points), -5.0)
    hi_g = max(max(p["gap"] + p["half"] for p in points), 5.0)

    def x(share: float) -> float:  # larger shares on the left: the map reads from cell-filled frames to fields
        return pad + (w - 2 * pad) * (math.log(hi_s) - math.log(share)) / (math.log(hi_s) - math.log(lo_s))

    def y(gap: float) -> float:
        return h - pad - (h - 2 * pad) * (gap - lo_g) / (hi_g - lo_g)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{y(0) - pad:.1f}" fill="#eef7ee"/>',
             f'<text x="{w / 2}" y="{pad + 16}" text-anchor="middle" fill="#2a6b2a">sparse wins</text>',
             f'<text x="{w / 2}" y="{h - pad - 8}" text-anchor="middle" fill="#8a3030">dense on a smaller copy wins</text>',
             f'<line x1="{pad}" y1="{y(0):.1f}" x2="{w - pad}" y2="{y(0):.1f}" stroke="#888" stroke-dasharray="4 3"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 14}" text-anchor="middle">target cell\'s share of the frame (log scale)</text>',
             f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">'
             'accuracy gap to the dense CNN at equal FLOPs (points)</text>']
    for share in (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005):
        if lo_s <= share <= hi_s:
            parts.append(f'<line x1="{x(share):.1f}" y1="{h - pad}" x2="{x(share):.1f}" y2="{h - pad + 5}" stroke="black"/>'
                         f'<text x="{x(share):.1f}" y="{h - pad + 18}" text-anchor="middle">{100 * share:g}%</text>')
    step = 10 if hi_g - lo_g > 40 else 5
    for tick in range(int(math.ceil(lo_g / step)) * step, int(hi_g) + 1, step):
        parts.append(f'<line x1="{pad - 5}" y1="{y(tick):.1f}" x2="{pad}" y2="{y(tick):.1f}" stroke="black"/>'
                     f'<text x="{pad - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:+d}</text>')
    for i, (label, ps) in enumerate(sorted(curves.items())):
        colour = COLOURS.get(label, "#000")
        line = " ".join(f"{x(p['share']):.1f},{y(p['gap']):.1f}" for p in ps)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>')
        for p in ps:
            parts.append(f'<line x1="{x(p["share"]):.1f}" y1="{y(p["gap"] - p["half"]):.1f}" x2="{x(p["share"]):.1f}" '
                         f'y2="{y(p["gap"] + p["half"]):.1f}" stroke="{colour}"/>'
                         f'<circle cx="{x(p["share"]):.1f}" cy="{y(p["gap"]):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{pad + 10}" y="{pad + 16 + 16 * i}" fill="{colour}">{label}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def section(inv: dict, curves: dict[str, list[dict]]) -> str:
    a = inv["settings"]
    rows = []
    for label, ps in sorted(curves.items()):
        for p in ps:
            rows.append([label, f"{100 * p['share']:.1f}%", p["set"].split("target ")[-1], f"{p['flops'] / 1e6:.1f}",
                         f"{p['acc']:.1f}", f"{p['dense']:.1f}", f"{p['gap']:+.1f} ± {p['half']:.1f}",
                         "" if p["selection"] is None else f"{p['selection']:.1f}x", f"{p['shrink2']:.1f}",
                         f"{p['shrink4']:.1f}", f"{p['plateau']:.1f}", p["seeds"]])
    wins = {label: [p for p in ps if p["gap"] - p["half"] > 0] for label, ps in curves.items()}
    short = []
    for label, ps in sorted(curves.items()):
        won = ", ".join(f"{100 * p['share']:.1f}%" for p in wins[label])
        gap_list = ", ".join(f"{p['gap']:+.1f}" for p in ps)
        short.append(f"{label} beats the dense CNN at its FLOPs "
                     + (f"where the target is {won} of the frame" if won else "at no share measured")
                     + f" (gap {gap_list} points from {100 * ps[0]['share']:.0f}% down to {100 * ps[-1]['share']:.1f}%)")
    return (f"{inv['stamp']} {len(inv['runs'])} runs, {a['jobs']} at once, {a['threads']} torch thread(s) each; "
            f"{a['epochs']} epochs, {a['train']} train / {a['val']} val / {a['test']} test fields per share, seeds "
            f"{', '.join(map(str, a['seeds']))}; {inv['wall_s'] / 60:.0f} min.\n\n"
            "**In short:** " + "; ".join(short) + ".\n\n"
            f"![regime map](regime_map.svg)\n\n"
            f"Synthetic fields, {a['size']}-px frames, the target cell's side from {max(a['targets'])} to "
            f"{min(a['targets'])} px (its share of the frame measured on the test masks), cues 1-2 px wide at every "
            "size. Each sparse design has one config for the whole map (sized for the smallest target: the same FLOPs "
            "at every share); the dense CNN runs shrunk 2x and 4x (the sparse designs cost between the two), and "
            "'dense at its FLOPs' is its "
            "accuracy interpolated in log FLOPs at the sparse design's cost. Gap: the mean over seeds of each seed's "
            "difference, with its 95% interval (t). A positive gap whose interval clears 0 is where selection pays.\n\n"
            "**Reading your own data's place.** Measure the cell's share of your frames (its area over the frame's: a "
            "cell about d px across in an S-px frame covers about 0.785 (d / S)^2), and run `bench_headroom.py` on your "
            "frames: if a 4x shrink costs the dense CNN under 3 points, you are on the left of this map, where a dense "
            "model on a smaller copy is the answer; selection can only pay where the shrink loses the class.\n\n"
            + markdown_table(["design", "target share", "target px", "MFLOPs", "test %", "dense at its FLOPs %",
                              "gap (95% CI)", "selection (x random)", "dense 2x shrink %", "dense 4x shrink %",
                              "last-3 val range (pts)", "seeds"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="frame side")
    parser.add_argument("--targets", type=int, nargs="+", default=[96, 64, 40, 24, 16], help="target cell sides, px")
    add_run_arguments(parser, seeds=[0, 1, 2], epochs=10, train=1500)
    parser.add_argument("--designs", nargs="+", default=None, help="only these design labels (dense ones are needed)")
    parser.add_argument("--results", type=Path, default=None, help="train nothing: the section from a saved invocation")
    args = parser.parse_args()
    inv = json.loads(args.results.read_text()) if args.results else invocation(args, "bench_regime.py", tasks_for(args))[0]
    curves = gaps(inv["runs"])
    body = section(inv, {k: v for k, v in curves.items() if k in SPARSE or k.startswith("tnet")})
    print(body)
    if not args.no_write:
        svg(curves, SVG)
        write_section("regime", "The regime map: where selection beats a smaller copy", body)


if __name__ == "__main__":
    main()
