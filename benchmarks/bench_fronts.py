"""Fronts side by side: the same space searched by two versions of the project (or with and without a
dimension), compared by hypervolume overall and per strategy, and by the sparse-vs-dense goal.

    python benchmarks/bench_fronts.py --space cells64 --run before=runs/c64_main --run after=runs/c64 \\
        --run "after, no input_size=runs/c64_noinput"

Each run is a finished run directory of the same space file, seed and trial budget. Hypervolume is
over complete, feasible trials (validation accuracy against FLOPs), with the reference point fixed by
the space (accuracy 0, FLOPs = ``constraints.max_flops``) and normalised by that box. The goal (from
the sparse-designs work): a sparse model within 1 point of the best dense model's test accuracy at no
more than 33% of its FLOPs; where no sparse model meets it, the shortfall in points is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from cellsparse.objective_info import ideal_point  # noqa: E402
from cellsparse.pareto import normalized_hypervolume, pareto_mask  # noqa: E402
from cellsparse.rundir import INPUT_COLUMN, TRIALS_DIR, RunRecord, eligible_mask, read_run  # noqa: E402

GOAL_POINTS, GOAL_FLOPS_SHARE, GOAL_SPEEDUP, GOAL_BATCH = 1.0, 1 / 3, 2.0, 256


def hv(frame: pd.DataFrame, max_flops: float) -> float:
    if frame.empty:
        return 0.0
    return normalized_hypervolume(frame[["accuracy", "flops"]].to_numpy(float), ["maximize", "minimize"], [0.0, max_flops],
                                  ideal_point(["accuracy", "flops"]))


def trial_name(row: pd.Series) -> str:
    return f"{row['strategy']} #{int(row['number'])}"


def goal_pair(frame: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None]:
    """(the best sparse model within 1/3 of the best dense model's FLOPs, that dense model), by validation."""
    dense, sparse = frame[~frame["sparse"]], frame[frame["sparse"]]
    if dense.empty:
        return None, None
    d = dense.loc[dense["accuracy"].idxmax()]
    cheap = sparse[sparse["flops"] <= GOAL_FLOPS_SHARE * d["flops"]]
    return (cheap.loc[cheap["accuracy"].idxmax()] if not cheap.empty else None), d


def goal(frame: pd.DataFrame, name: Callable[[pd.Series], str] = trial_name) -> str:
    """The goal's verdict on accuracy and FLOPs for the pair ``goal_pair`` picks (``name`` names a trial)."""
    if frame[~frame["sparse"]].empty or frame[frame["sparse"]].empty:
        return "needs both sparse and dense trials"
    s, d = goal_pair(frame)
    if s is None:
        return f"no sparse trial within 1/3 of the best dense model's {d['flops'] / 1e6:.2f} MFLOPs"
    gap = 100 * (d["test_accuracy"] - s["test_accuracy"])
    verdict = "met" if gap <= GOAL_POINTS else f"short by {gap - GOAL_POINTS:.1f} points"
    return (f"{verdict}: {name(s)} {100 * s['test_accuracy']:.1f}% test at "
            f"{s['flops'] / 1e6:.2f} MFLOPs against {name(d)} {100 * d['test_accuracy']:.1f}% "
            f"at {d['flops'] / 1e6:.2f} MFLOPs")


def throughput(frame: pd.DataFrame, trial_dir: Callable[[pd.Series], Path], *, batch: int = GOAL_BATCH,
               name: Callable[[pd.Series], str] = trial_name) -> str:
    """The goal's throughput half: the goal pair's CPU images/s at ``batch``, each model's faster of torch
    (eager, .pt2) and onnxruntime with every core, timed side by side (``bench_export.time_model``);
    ``trial_dir`` finds a trial's folder from its row."""
    from bench_export import time_model

    s, d = goal_pair(frame)
    if s is None or d is None:
        return "no goal pair to time"
    threads = os.cpu_count() or 1
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in (s, d):
            _, rows = time_model(trial_dir(row), Path(tmp), threads=[threads], batch_sizes=[batch])
            best = max(rows, key=lambda r: r["images_per_s"])
            rates.append((best["images_per_s"], best["runtime"]))
    (rs, ws), (rd, wd) = rates
    ratio = rs / rd
    return (f"CPU throughput at batch {batch} ({threads} threads, the faster runtime of each): {name(s)} {rs:,.0f} "
            f"images/s ({ws}) against {name(d)} {rd:,.0f} images/s ({wd}), {ratio:.2f}x: "
            f"{'meets' if ratio >= GOAL_SPEEDUP else 'misses'} the {GOAL_SPEEDUP:g}x target")


def in_short(table: list[list[object]], goals: list[str]) -> str:
    """The overall hypervolume of each run and the goal's verdict for the last one, in words."""
    hvs = ", ".join(f"{row[0]} {row[2]}" for row in table)
    last = goals[-1].removeprefix("- ").rstrip(".") if goals else "no runs"
    return f"**In short:** hypervolume of the whole front: {hvs}. The sparse-vs-dense goal, {last}."


def compare(runs: dict[str, RunRecord]) -> tuple[list[str], list[list[object]], list[str]]:
    strategies: list[str] = []
    rows, goals = [], []
    for label, run in runs.items():
        max_flops = float(run.space.limit("flops"))
        trials = run.trials
        ok = trials[eligible_mask(trials, ["accuracy", "flops"])]
        per = {s: (hv(g, max_flops), len(g)) for s, g in ok.groupby("strategy")}
        strategies += [s for s in per if s not in strategies]
        rows.append((label, len(trials), hv(ok, max_flops), per))
        goals.append(f"- {label}: {goal(ok)}.")
    header = ["run", "trials", "hypervolume, all"] + [f"{s} (trials)" for s in strategies]
    table = [[label, n, f"{total:.4f}"] + [f"{per[s][0]:.4f} ({per[s][1]})" if s in per else "-" for s in strategies]
             for label, n, total, per in rows]
    return header, table, goals


def front_members(trials: pd.DataFrame) -> list[list[object]]:
    """A run's Pareto front (its trials table as ``read_run`` gives it), cheapest first: where each
    design sits and the resolution it sees."""
    ok = trials[eligible_mask(trials, ["accuracy", "flops"])]
    front = ok[pareto_mask(ok[["accuracy", "flops"]].to_numpy(float), ["maximize", "minimize"])].sort_values("flops")
    return [[f"#{int(r['number'])}", r["strategy"], "sparse" if r["sparse"] else "dense",
             f"{int(r[INPUT_COLUMN])} px" if INPUT_COLUMN in r and pd.notna(r[INPUT_COLUMN]) else "-",
             f"{100 * r['accuracy']:.1f}%", f"{100 * r['test_accuracy']:.1f}%", f"{r['flops'] / 1e6:.2f}"]
            for _, r in front.iterrows()]


def downscaled_dense(label: str, members: list[list[object]], full_size: int) -> str:
    """Where the front's dense models that see a smaller copy of the ``full_size`` frame sit."""
    dense = [m for m in members if m[2] == "dense" and m[3] != "-" and int(str(m[3]).split()[0]) < full_size]
    if not dense:
        return f"No dense model on the front of {label} sees a downscaled frame"
    sparse = [m for m in members if m[2] == "sparse"]
    cheapest = min(float(m[6]) for m in dense)
    below = [m for m in sparse if float(m[6]) < cheapest]
    listed = "; ".join(f"{m[1]} {m[0]} at {m[3]} ({m[5]} test, {m[6]} MFLOPs)" for m in dense)
    return (f"Downscaled dense models on the front of {label}: {listed}; {len(below)} of its {len(sparse)} sparse "
            f"front members are cheaper than the cheapest of them")


def fronts_text(fronts: dict[str, list[list[object]]]) -> str:
    header = ["trial", "strategy", "family", "sees", "val acc", "test acc", "MFLOPs"]
    return "\n\n".join(f"Front of {label}, cheapest first:\n\n" + markdown_table(header, members)
                        for label, members in fronts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, help="the space the runs searched (names the section)")
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="a run directory and its label")
    parser.add_argument("--throughput", action="store_true",
                        help="also time the last run's goal pair on this CPU at batch 256 (exports both models)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    runs = {}
    for item in args.run:
        label, _, path = item.rpartition("=")
        if not label or not (Path(path) / "trials.csv").is_file():
            parser.error(f"--run {item!r}: expected LABEL=DIR with DIR a finished run directory")
        runs[label] = Path(path)
    loaded = {label: read_run(run_dir) for label, run_dir in runs.items()}
    header, table, goals = compare(loaded)
    short = in_short(table, goals)
    fronts = {label: front_members(run.trials) for label, run in loaded.items()}
    last = list(runs)[-1]
    short += f" {downscaled_dense(last, fronts[last], int(loaded[last].space.image_size))}."
    if args.throughput:
        trials = loaded[last].trials
        ok = trials[eligible_mask(trials, ["accuracy", "flops"])]
        short += f" {throughput(ok, lambda r: runs[last] / TRIALS_DIR / str(int(r['number'])))}."
    text = markdown_table(header, table) + "\n\nThe goal, a sparse model within 1 point of the best dense model's test " \
        "accuracy at no more than 33% of its FLOPs:\n\n" + "\n".join(goals) + "\n\n" + fronts_text(fronts)
    print(short + "\n\n" + text)
    if not args.no_write:
        command = own_command("bench_fronts.py")
        body = (f"{stamp(command)}\n\n{short}\n\nThe same space file, seed and trial budget, searched by each version; "
                f"hypervolume "
                f"of validation accuracy against FLOPs over complete, feasible trials, reference accuracy 0 and FLOPs = "
                f"max_flops, normalised by that box; per strategy, over that strategy's trials alone.\n\n{text}\n")
        write_section(f"fronts_{args.space}", f"Fronts before and after: {args.space}", body)


if __name__ == "__main__":
    main()
