"""The sparse-vs-dense goal with a search per strategy: every design gets the same trial budget.

In one search over all five strategies, TPE draws the strategy like any other parameter, so at 24
trials a strategy gets anywhere from 1 to 10 of them and the goal compares designs given very
different care. Here each named strategy is searched on its own: the space file with only that
strategy's block (and the ``space.shared`` keys it takes), the same trial budget, sampler, seed,
data and training settings, one trial at a time in process (the optuna backend, so a CPU gives the
same numbers again). The runs are then pooled:

- each strategy's own front: hypervolume (reference accuracy 0, FLOPs = ``constraints.max_flops``,
  normalised by that box), its most accurate trial and its cheapest front member;
- the front of all strategies' trials together, cheapest first: which design wins which budget;
- the goal on the pooled trials (``bench_fronts.goal``): the most accurate sparse model (by
  validation) within 33% of the FLOPs of the most accurate dense model, within 1 point of its test
  accuracy; with ``--throughput`` both models' CPU images/s at batch 256 as well.

    python benchmarks/bench_goal.py --space cells64 --strategies span_pyramid dense_cnn --trials 16 --out runs/goal
    python benchmarks/bench_goal.py --space cells64 ... --throughput   # reuses the finished runs in --out

A run directory in ``--out`` that already holds the derived space is resumed (a finished one is
reused); one that holds another space is an error.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402
from bench_fronts import GOAL_FLOPS_SHARE, goal, goal_pair, hv, throughput  # noqa: E402

from cellsparse.pareto import pareto_mask  # noqa: E402
from cellsparse.rundir import SPACE_FILE, TRIALS_DIR, eligible_mask, read_run  # noqa: E402
from search_space.spec import accepted_keys, load_space  # noqa: E402


def single_strategy_space(space: Path, strategy: str, trials: int) -> dict:
    """``space`` with only ``strategy``'s block, the shared keys it takes, ``trials`` trials and no time limit."""
    raw = yaml.safe_load(space.read_text())
    blocks = raw["space"]["strategy"]
    if strategy not in blocks:
        raise SystemExit(f"bench_goal: {space} has no block for strategy {strategy!r} (it has {', '.join(blocks)})")
    keys = accepted_keys(strategy)
    raw["name"] = f"{raw['name']}_{strategy}"
    raw["space"]["shared"] = {k: v for k, v in (raw["space"].get("shared") or {}).items() if k in keys}
    raw["space"]["strategy"] = {strategy: blocks[strategy]}
    raw["search"] = {**raw["search"], "trials": trials, "timeout_s": None}
    return raw


def search(raw: dict, out: Path) -> Path:
    """Run the search of ``raw`` in ``out``, in process, one trial at a time; where ``out`` already holds
    a run, resume it (``runner.search`` refuses a run of another space, and a finished one only
    rebuilds its report)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{raw['name']}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        command = [sys.executable, "-m", "runner.search", "--space", str(path), "--backend", "optuna", "--out", str(out)]
        if (out / SPACE_FILE).exists():
            command.append("--resume")
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            raise SystemExit(f"bench_goal: the search in {out} failed (see above)")
    return out


def strategy_row(strategy: str, trials: pd.DataFrame, max_flops: float) -> list[object]:
    ok = trials[eligible_mask(trials, ["accuracy", "flops"])]
    if ok.empty:
        return [strategy, len(trials), "0.0000", "-", "-"]
    best = ok.loc[ok["accuracy"].idxmax()]
    front = ok[pareto_mask(ok[["accuracy", "flops"]].to_numpy(float), ["maximize", "minimize"])]
    cheap = front.loc[front["flops"].idxmin()]

    def say(r: pd.Series) -> str:
        return (f"#{int(r['number'])}: {100 * r['accuracy']:.1f}% val, {100 * r['test_accuracy']:.1f}% test, "
                f"{r['flops'] / 1e6:.2f} MFLOPs")

    return [strategy, len(trials), f"{hv(ok, max_flops):.4f}", say(best), say(cheap)]


def pooled_front(pooled: pd.DataFrame) -> tuple[list[list[object]], str]:
    """The front of every strategy's trials together, cheapest first (where each design wins), and a
    sentence counting its members per strategy."""
    front = pooled[pareto_mask(pooled[["accuracy", "flops"]].to_numpy(float), ["maximize", "minimize"])].sort_values("flops")
    rows = [[r["strategy"], f"#{int(r['number'])}", f"{100 * r['accuracy']:.1f}%", f"{100 * r['test_accuracy']:.1f}%",
             f"{r['flops'] / 1e6:.2f}"] for _, r in front.iterrows()]
    def span(strategy: str) -> str:
        low, high = (f"{v / 1e6:.2f}" for v in front.loc[front["strategy"] == strategy, "flops"].agg(["min", "max"]))
        return f"{low} MFLOPs" if low == high else f"{low}-{high} MFLOPs"

    spans = "; ".join(f"{s} {n} ({span(s)})" for s, n in front["strategy"].value_counts().items())
    return rows, f"The pooled front's {len(front)} members: {spans}. "


def dense_within_budget(pooled: pd.DataFrame) -> str:
    """What a dense model reaches inside the goal's FLOPs budget (a third of the most accurate dense
    model's): where it beats every sparse model there, the sparse designs' pixel choice is not what wins."""
    _, d = goal_pair(pooled)
    if d is None:
        return ""
    budget = GOAL_FLOPS_SHARE * d["flops"]
    dense = pooled[~pooled["sparse"] & (pooled["flops"] <= budget)]
    if dense.empty:
        return f"No dense model fits in that budget ({budget / 1e6:.2f} MFLOPs). "
    b = dense.loc[dense["accuracy"].idxmax()]
    return (f"In that budget ({budget / 1e6:.2f} MFLOPs) the most accurate dense model, {b['strategy']} #{int(b['number'])}, "
            f"reaches {100 * b['test_accuracy']:.1f}% test at {b['flops'] / 1e6:.2f} MFLOPs. ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, help="a space in search_space/ (cells64, rbc64, ...) or a YAML path")
    parser.add_argument("--strategies", nargs="+", required=True, help="the strategies to search, each on its own")
    parser.add_argument("--trials", type=int, default=16, help="trials per strategy (default 16)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the per-strategy run directories")
    parser.add_argument("--throughput", action="store_true", help="also time the goal pair on this CPU at batch 256")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    space = Path(args.space) if args.space.endswith((".yaml", ".yml")) else ROOT / "search_space" / f"{args.space}.yaml"
    if not space.is_file():
        parser.error(f"--space {args.space}: no such space file ({space})")
    data = load_space(space).data
    if data.path is not None and not (ROOT / data.path).exists():
        print(f"skipped: {space.name}'s data is not at {data.path} (set the variable its data.path names)")
        return 0
    runs = {s: search(single_strategy_space(space, s, args.trials), args.out / f"{space.stem}_{s}") for s in args.strategies}

    loaded = {s: read_run(d) for s, d in runs.items()}
    max_flops = float(next(iter(loaded.values())).space.limit("flops"))
    rows = [strategy_row(s, run.trials, max_flops) for s, run in loaded.items()]
    pooled = pd.concat([run.trials.assign(run_dir=str(runs[s])) for s, run in loaded.items()], ignore_index=True)
    pooled = pooled[eligible_mask(pooled, ["accuracy", "flops"])]
    verdict = goal(pooled)
    front_rows, front_words = pooled_front(pooled)
    short = (f"**In short:** with {args.trials} trials per strategy on {space.stem}, the sparse-vs-dense goal: {verdict}. "
             + dense_within_budget(pooled) + front_words + "Each strategy's own hypervolume: "
             + ", ".join(f"{r[0]} {r[2]}" for r in rows) + ".")
    if args.throughput:
        short += " " + throughput(pooled, lambda r: Path(r["run_dir"]) / TRIALS_DIR / str(int(r["number"]))) + "."
    table = (markdown_table(["strategy", "trials", "hypervolume", "most accurate", "cheapest front member"], rows)
             + "\n\nThe front of all strategies' trials together, cheapest first:\n\n"
             + markdown_table(["strategy", "trial", "val acc", "test acc", "MFLOPs"], front_rows))
    print(short + "\n\n" + table)
    if not args.no_write:
        body = (f"{stamp(own_command('bench_goal.py', argv))}\n\n{short}\n\nEach strategy searched on its own: "
                f"`search_space/{space.name}` with that strategy's block alone (and the shared keys it takes), "
                f"{args.trials} trials, the space's sampler and seed, one trial at a time in process. Trial numbers are "
                f"each run's own. Hypervolume: validation accuracy against FLOPs, reference accuracy 0 and FLOPs = "
                f"max_flops ({max_flops / 1e6:.0f} M), normalised by that box.\n\n{table}\n")
        write_section(f"goal_{space.stem}", f"The goal with a search per strategy: {space.stem}", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
