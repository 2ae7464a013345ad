"""Search efficiency: hypervolume against trials and wall-clock time for the random, TPE and NSGA-II samplers.

    python benchmarks/bench_search_efficiency.py                     # ~10 minutes on 2 CPU cores
    python benchmarks/bench_search_efficiency.py --seeds 3 --trials 12   # quicker
    python benchmarks/bench_search_efficiency.py --no-write          # print only

One fixed small task, written as a space file in a temporary folder: synthetic brightfield cells at
16 px (train 512 / val 256 / test 128, data and trial seed 0 for every search), 2 epochs per trial,
four strategies (sparse_topk, span_pyramid, dense_cnn, dense_vit) with a few searched parameters
each and a FLOPs budget. Only the sampler and its seed change from search to search; every search
runs through the real CLI (``runner.search.main``, optuna backend, one trial at a time, 1 thread).

The hypervolume reference point is fixed in advance: accuracy 0 and FLOPs = the space's max_flops,
and the hypervolume is divided by the reference box (1 x max_flops), so 1.0 would be a model with
accuracy 1 at 0 FLOPs. It is computed with ``reports.picks.hypervolume_history`` on each run's
trials.csv (COMPLETE, feasible trials only). Configs over the budget are recorded infeasible
without training; they still count as trials.

Sampler settings: TPE with ``n_startup_trials`` = 5 (Optuna's default, 10, would leave TPE random for
most of a 16-trial search) and NSGA-II with ``population_size`` = 4 (the default, 50, would never
finish a first generation); random has none. Both are said in the written section.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, stamp, write_section  # noqa: E402

from cellsparse.rundir import read_trials  # noqa: E402

SAMPLERS = {
    "random": "{}",
    "tpe": "{n_startup_trials: 5}",
    "nsga2": "{population_size: 4}",
}
MAX_FLOPS = 4.0e6
IMAGE_SIZE = 16


def space_text(name: str, sampler: str, seed: int, trials: int) -> str:
    return textwrap.dedent(f"""\
        name: {name}
        seed: 0
        data: {{source: synthetic, modality: brightfield, image_size: {IMAGE_SIZE}, train: 512, val: 256, test: 128}}
        objectives: {{accuracy: maximize, flops: minimize}}
        constraints: {{max_flops: {MAX_FLOPS:.1e}}}
        training: {{epochs: 2, batch_size: 64, lr: {{log: [1.0e-3, 1.0e-2]}}, warmup_epochs: 0.2}}
        search:
          trials: {trials}
          sampler: {{name: {sampler}, seed: {seed}, options: {SAMPLERS[sampler]}}}
          backend: optuna
          max_concurrent: 1
          resources: {{cpu: 1, gpu: 0}}
          reference_point: {{accuracy: 0.0, flops: {MAX_FLOPS:.1e}}}
        space:
          shared:
            embed_dim: [16, 32]
            num_heads: [2]
            depth: {{int: [1, 2]}}
          strategy:
            sparse_topk:
              k_fraction: {{float: [0.1, 0.5]}}
              coarse_channels: [4, 8]
              k_rule: [fixed, schedule]
            span_pyramid:
              patch_size: [2, 4]
              keep_fraction: {{float: [0.3, 0.9]}}
              k_rule: [fixed]
            dense_cnn:
              width: [4, 8, 16]
              stages: {{int: [2, 3]}}
              stem_stride: [1, 2]
            dense_vit:
              patch_size: [2, 4]
        """)


def run_one(workdir: Path, sampler: str, seed: int, trials: int) -> dict:
    from reports.picks import hypervolume_history
    from runner.search import main

    name = f"eff_{sampler}_{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    space = workdir / f"{name}.yaml"
    space.write_text(space_text(name, sampler, seed, trials))
    out = workdir / name
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["--space", str(space), "--out", str(out)])
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{name}: the search exited with {code}")
    table = read_trials(out / "trials.csv")
    directions = {"accuracy": "maximize", "flops": "minimize"}
    ref = {"accuracy": 0.0, "flops": MAX_FLOPS}
    feasible = table["feasible"].astype(str).str.lower().eq("true")
    by_n = hypervolume_history(table, directions, ref, by="number")
    by_t = hypervolume_history(table, directions, ref, by="time")
    return {
        "sampler": sampler, "seed": seed, "wall_s": wall,
        "hv_by_trial": by_n["normalized"].tolist(),  # reports.pareto's normalisation, as the report shows it
        "hv_by_time": list(zip(by_t["elapsed_s"].tolist(), by_t["normalized"].tolist(), strict=True)),
        "complete": int(((table["state"] == "COMPLETE") & table["feasible"].astype(str).str.lower().eq("true")).sum()),
        "infeasible": int((~table["feasible"].astype(str).str.lower().eq("true")).sum()),
        "best_acc": float(pd.to_numeric(table["accuracy"], errors="coerce").max()),
        "trained_by_strategy": table[feasible]["strategy"].value_counts().to_dict(),
        "infeasible_by_strategy": table[~feasible]["strategy"].value_counts().to_dict(),
    }


def hv_at_time(run: dict, seconds: float) -> float:
    best = 0.0
    for elapsed, hv in run["hv_by_time"]:
        if elapsed <= seconds:
            best = hv
    return best


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f} ({min(values):.3f}-{max(values):.3f})"


def compare(runs: list[dict], samplers: list[str], trials: int) -> dict:
    """Final hypervolume per sampler (mean and sd over seeds), the leader, the runner-up, the gap between their
    means and the largest seed spread: a sampler stands apart only when that gap exceeds the spread."""
    final = {s: [r["hv_by_trial"][trials - 1] for r in runs if r["sampler"] == s] for s in samplers}
    means = {s: statistics.fmean(v) for s, v in final.items()}
    sds = {s: (statistics.stdev(v) if len(v) > 1 else 0.0) for s, v in final.items()}
    best = max(means, key=means.get)
    others = [s for s in samplers if s != best]
    runner_up = max(others, key=means.get) if others else None
    gap = means[best] - means[runner_up] if runner_up is not None else 0.0
    noise = max(sds.values())
    return {"final": final, "means": means, "sds": sds, "best": best, "runner_up": runner_up, "gap": gap,
            "noise": noise, "apart": runner_up is not None and gap > noise}


def verdict(runs: list[dict], samplers: list[str], trials: int) -> str:
    """One bold sentence: does any sampler's final hypervolume stand apart by more than the seed spread?"""
    c = compare(runs, samplers, trials)
    means, best, runner_up, noise = c["means"], c["best"], c["runner_up"], c["noise"]
    if runner_up is None:
        return f"**{best}: HV {means[best]:.3f} after {trials} trials.**"
    if c["apart"]:
        return (f"**After {trials} trials {best} leads (HV {means[best]:.3f} against {runner_up}'s {means[runner_up]:.3f}), "
                f"by more than the largest spread between seeds ({noise:.3f}).** One small task and few seeds: "
                "a hint, not a ranking.")
    return (f"**After {trials} trials no sampler stands apart: the means lie within {means[best] - min(means.values()):.3f} "
            f"of each other (best {best}, {means[best]:.3f}), less than the spread between seeds (up to {noise:.3f} "
            "standard deviation).** On a task this small and short, differences of this size are seed noise.")


def in_short(runs: list[dict], samplers: list[str], trials: int) -> str:
    """The section's plain-words paragraph: hypervolume after the last trial per sampler (mean ± sd over seeds)
    and whether one stands apart, i.e. whether the gap between the two best means exceeds the seed spread."""
    c = compare(runs, samplers, trials)
    seeds = max(len(v) for v in c["final"].values())
    each = [f"{s} {c['means'][s]:.3f} ± {c['sds'][s]:.3f}" for s in samplers]
    listed = each[0] if len(each) == 1 else ", ".join(each[:-1]) + " and " + each[-1]
    text = (f"Hypervolume of the accuracy/FLOPs front after {trials} trials (higher is better; mean ± sd over {seeds} "
            f"seed{'s' if seeds != 1 else ''}): {listed}.")
    best, runner_up = c["best"], c["runner_up"]
    if runner_up is None:
        return "**In short:** " + text
    if c["apart"]:
        text += (f" One sampler stands apart: {best} leads {runner_up} by {c['gap']:.3f}, more than the largest "
                 f"spread between seeds (sd {c['noise']:.3f}).")
    else:
        text += (f" No sampler stands apart: the gap between the best two means ({best} over {runner_up}, "
                 f"{c['gap']:.3f}) is no larger than the spread between seeds (sd up to {c['noise']:.3f}).")
    return "**In short:** " + text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds per sampler (default 5)")
    parser.add_argument("--trials", type=int, default=16, help="trials per search (default 16)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    runs: list[dict] = []
    total_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # a discarded warm-up search first: the first search in a process also pays for imports and
        # first-call set-up, which would otherwise count against whichever sampler ran first
        run_one(Path(tmp) / "warmup", "random", 99, 2)
        # seeds outer, samplers inner: a slow spell on a shared machine hits every sampler alike
        for seed in range(args.seeds):
            for sampler in args.samplers:
                run = run_one(Path(tmp), sampler, seed, args.trials)
                runs.append(run)
                print(f"{sampler:>6} seed {seed}: HV {run['hv_by_trial'][-1]:.3f} after {args.trials} trials, "
                      f"{run['wall_s']:.1f} s, {run['complete']} complete, {run['infeasible']} infeasible", flush=True)
    total_s = time.perf_counter() - total_start

    checkpoints = sorted({n for n in (4, 8, 12, args.trials) if n <= args.trials})
    walls = [r["wall_s"] for r in runs]
    time_marks = [round(statistics.median(walls) * f) for f in (0.25, 0.5, 1.0)]
    rows_n, rows_t = [], []
    for sampler in args.samplers:
        mine = [r for r in runs if r["sampler"] == sampler]
        rows_n.append([sampler, len(mine)] + [spread([r["hv_by_trial"][n - 1] for r in mine]) for n in checkpoints])
        rows_t.append([sampler, len(mine)] + [spread([hv_at_time(r, s) for r in mine]) for s in time_marks]
                      + [f"{statistics.fmean(r['wall_s'] for r in mine):.1f}",
                         f"{statistics.fmean(r['infeasible'] for r in mine):.1f}"])
    table_n = markdown_table(["sampler", "seeds"] + [f"HV after {n} trials" for n in checkpoints], rows_n)
    table_t = markdown_table(["sampler", "seeds"] + [f"HV at {s} s" for s in time_marks]
                             + ["mean search wall (s)", "mean infeasible trials"], rows_t)
    trained: dict[str, int] = {}
    over: dict[str, int] = {}
    for r in runs:
        for k, v in r["trained_by_strategy"].items():
            trained[k] = trained.get(k, 0) + int(v)
        for k, v in r["infeasible_by_strategy"].items():
            over[k] = over.get(k, 0) + int(v)
    mix = ", ".join(f"{k} {trained.get(k, 0)} trained / {over.get(k, 0)} over budget"
                    for k in sorted(set(trained) | set(over)))
    command = "python benchmarks/bench_search_efficiency.py" + (
        f" --seeds {args.seeds}" if args.seeds != 5 else "") + (f" --trials {args.trials}" if args.trials != 16 else "")
    body = f"""\
{stamp(command)} Whole benchmark: {total_s / 60:.1f} min.

{in_short(runs, args.samplers, args.trials)}

Task (fixed for every search): synthetic brightfield cells at {IMAGE_SIZE} px, train 512 / val 256 / test 128
(data and trial seed 0), 2 epochs per trial, {args.trials} trials per search, strategies sparse_topk,
span_pyramid, dense_cnn and dense_vit, FLOPs budget {MAX_FLOPS:.0e}; optuna backend, one trial at a time,
1 thread, after one discarded warm-up search. Only the sampler and its seed (0..{args.seeds - 1}) change;
for equal seeds the first trials are the same random draws (TPE's start-up trials and NSGA-II's first
generation are random), so the rows agree up to trial 4. TPE runs with `n_startup_trials: 5`,
NSGA-II with `population_size: 4` (the Optuna defaults, 10 and 50, would leave both random for most or
all of so short a search); random has no settings.

Hypervolume of the (validation accuracy, FLOPs) front, reference point fixed in advance at accuracy 0
and FLOPs {MAX_FLOPS:.0e} (the budget), divided by that box (so 1.0 = accuracy 1 at 0 FLOPs); computed
by `reports.picks.hypervolume_history` on each run's trials.csv. Cells: mean ± standard deviation
over seeds (min-max).

{table_n}

Against wall-clock time from the first trial's start (the time marks are 1/4, 1/2 and all of the
median search time; a run that has not finished a trial by then counts 0):

{table_t}

{verdict(runs, args.samplers, args.trials)}

Trials per strategy over all {len(runs)} searches: {mix}. Configs over the budget are recorded
infeasible without training; they use up a trial but almost no time.
"""
    print(body)
    if not args.no_write:
        write_section("search_efficiency", "Search efficiency: hypervolume per sampler", body)


if __name__ == "__main__":
    main()
