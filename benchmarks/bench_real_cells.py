"""Real cells: the accuracy/FLOPs front of a search on pbc28 (PBC blood cells, 8 classes, 28x28 RGB),
next to the published BloodMNIST figures.

    PBC28_NPZ=/path/to/pbc28.npz python benchmarks/bench_real_cells.py            # runs the search
    python benchmarks/bench_real_cells.py --trials 12 --out /tmp/pbc28          # a shorter search
    python benchmarks/bench_real_cells.py --run-dir runs/pbc28                  # reads a finished run
    python benchmarks/bench_real_cells.py --run-dir runs/pbc28 --no-write       # print only

Without ``--run-dir`` it runs ``python -m runner.search --space search_space/blood_cells.yaml --out DIR``
(extra flags: ``--trials``, ``--backend``, ``--max-concurrent``), with the data file taken from
``PBC28_NPZ`` or the space file's default ``../shared/data/pbc28.npz``; when neither exists it says
so and exits 0 without writing anything (a fresh clone does not have the file).

From the run's trials.csv (COMPLETE, feasible trials) it writes the section "real_cells" of
docs/benchmarks.md: the Pareto front of all strategies (validation accuracy against FLOPs, test
accuracy beside), the best test accuracy within 1, 5, 20 and 100 MFLOPs (picked by validation
accuracy, as a user would pick, and also the best test accuracy present), the best sparse model
against the best dense model in each budget, and whether the front holds a model at or above
96.6% test accuracy (Google AutoML Vision on BloodMNIST) at no more than 10 MFLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, stamp, write_section  # noqa: E402

SPARSE = ("sparse_topk", "tnet_traversal", "span_pyramid")
DENSE = ("dense_cnn", "dense_vit")
BUDGETS_MFLOPS = (1, 5, 20, 100)
BAR_ACC, BAR_MFLOPS = 0.966, 10.0
PUBLISHED = [  # BloodMNIST (MedMNIST v2) test split, 28x28 input; FLOPs from /work/shared/data/README.md
    ("ResNet-18 (28), MedMNIST v2", 0.958, "~910"),
    ("ResNet-50 (28), MedMNIST v2", 0.956, "~2,100"),
    ("AutoKeras, MedMNIST v2", 0.961, "not published"),
    ("Google AutoML Vision, MedMNIST v2", 0.966, "not published"),
]


def data_path() -> Path:
    """PBC28_NPZ (relative to the current directory), else the space file's default, which the search
    (run from the project root) resolves to ../shared/data/pbc28.npz beside the project."""
    if os.environ.get("PBC28_NPZ"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["PBC28_NPZ"]))).resolve()
    return (ROOT / ".." / "shared" / "data" / "pbc28.npz").resolve()


def run_search(args: argparse.Namespace) -> tuple[Path, str, float]:
    cmd = [sys.executable, "-m", "runner.search", "--space", "search_space/blood_cells.yaml", "--out", str(args.out)]
    for flag, value in (("--trials", args.trials), ("--backend", args.backend), ("--max-concurrent", args.max_concurrent)):
        if value is not None:
            cmd += [flag, str(value)]
    env = {**os.environ, "PBC28_NPZ": str(data_path())}
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the search exited with status {code}: {' '.join(cmd)}")
    shown = "python -m runner.search " + " ".join(cmd[3:])
    return Path(args.out), shown, wall


def eligible(table: pd.DataFrame) -> pd.DataFrame:
    ok = (table["state"] == "COMPLETE") & table["feasible"].astype(str).str.lower().eq("true")
    frame = table[ok].copy()
    for col in ("accuracy", "flops", "test_accuracy"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame.dropna(subset=["accuracy", "flops"])


def front(frame: pd.DataFrame) -> pd.DataFrame:
    from reports.pareto import pareto_mask

    mask = pareto_mask(frame[["accuracy", "flops"]].to_numpy(float), ["maximize", "minimize"])
    return frame[mask].sort_values("flops")


def pct(x: float | None) -> str:
    return "-" if x is None or pd.isna(x) else f"{100 * x:.2f}%"


def used_fraction(run_dir: Path, number: int) -> str:
    """Share of the image the model looked at (metrics.json ``used_fraction``; 1 for dense models)."""
    path = run_dir / "trials" / str(number) / "metrics.json"
    try:
        value = json.loads(path.read_text()).get("used_fraction")
    except (OSError, ValueError):
        return "-"
    return "-" if value is None else f"{100 * float(value):.0f}%"


def best_in(frame: pd.DataFrame, mflops: float, strategies: tuple[str, ...] | None = None) -> pd.Series | None:
    """Most accurate on validation within the budget (ties: fewer FLOPs), as a user would pick it."""
    sub = frame[frame["flops"] <= mflops * 1e6]
    if strategies is not None:
        sub = sub[sub["strategy"].isin(strategies)]
    if sub.empty:
        return None
    return sub.sort_values(["accuracy", "flops"], ascending=[False, True]).iloc[0]


def describe(row: pd.Series | None) -> str:
    if row is None:
        return "none"
    return (f"#{int(row['number'])} {row['strategy']}: val {pct(row['accuracy'])}, test {pct(row['test_accuracy'])}, "
            f"{row['flops'] / 1e6:.2f} MFLOPs")


def section(run_dir: Path, command: str, wall_s: float | None) -> str:
    table = pd.read_csv(run_dir / "trials.csv")
    frame = eligible(table)
    space_info = ""
    run_json = run_dir / "run.json"
    if run_json.exists():
        info = json.loads(run_json.read_text())
        space_info = f" Run started {info.get('started_at', '?')}"
        if info.get("wall_time_s"):
            space_info += f", search wall time {float(info['wall_time_s']) / 60:.1f} min"
        space_info += f" ({info.get('backend', '?')} backend, sampler {info.get('sampler', '?')}, seed {info.get('seed', '?')})."
    states = table["state"].value_counts().to_dict()
    infeasible = int((~table["feasible"].astype(str).str.lower().eq("true")).sum())
    if frame.empty:
        return f"{stamp(command)}\n\nNo complete, feasible trial in `{run_dir}` (states: {states})."

    per_strategy = []
    for name, group in frame.groupby("strategy"):
        best = group.sort_values(["accuracy", "flops"], ascending=[False, True]).iloc[0]
        per_strategy.append([name, len(group), pct(best["accuracy"]), pct(best["test_accuracy"]),
                             f"{best['flops'] / 1e6:.2f}", f"{group['flops'].min() / 1e6:.2f}-{group['flops'].max() / 1e6:.2f}",
                             f"{pd.to_numeric(group['duration_s'], errors='coerce').mean() / 60:.1f}"])

    par = front(frame)
    front_rows = [[int(r["number"]), r["strategy"], pct(r["accuracy"]), pct(r["test_accuracy"]),
                   f"{r['flops'] / 1e6:.2f}", f"{int(r['params_count']):,}", used_fraction(run_dir, int(r["number"]))]
                  for _, r in par.iterrows()]

    budget_rows = []
    for b in BUDGETS_MFLOPS:
        pick = best_in(frame, b)
        within = frame[frame["flops"] <= b * 1e6]
        top_test = within["test_accuracy"].max() if not within.empty else None
        budget_rows.append([f"<= {b}", len(within), describe(pick), pct(top_test),
                            describe(best_in(frame, b, SPARSE)), describe(best_in(frame, b, DENSE))])

    bar = frame[(frame["flops"] <= BAR_MFLOPS * 1e6) & (frame["test_accuracy"] >= BAR_ACC)]
    bar_front = par[(par["flops"] <= BAR_MFLOPS * 1e6) & (par["test_accuracy"] >= BAR_ACC)]
    best_bar = best_in(frame, BAR_MFLOPS)
    if not bar_front.empty:
        verdict = (f"**Met.** The front holds {len(bar_front)} model(s) at or above {pct(BAR_ACC)} test accuracy at no "
                   f"more than {BAR_MFLOPS:g} MFLOPs, e.g. {describe(bar_front.iloc[0])}.")
    else:
        verdict = (f"**Not met.** No model on the front reaches {pct(BAR_ACC)} test accuracy at no more than "
                   f"{BAR_MFLOPS:g} MFLOPs; the most accurate (by validation) within {BAR_MFLOPS:g} MFLOPs is "
                   f"{describe(best_bar)}.")
        if not bar.empty:
            verdict += (f" ({len(bar)} trial(s) off the front do reach it on the test split, e.g. "
                        f"{describe(bar.sort_values('flops').iloc[0])}, but validation accuracy, which the search "
                        "optimises, does not pick them.)")

    best_sparse, best_dense = best_in(frame, 1e9, SPARSE), best_in(frame, 1e9, DENSE)
    wall = f" Search wall time: {wall_s / 60:.1f} min." if wall_s else ""
    return f"""\
{stamp(command)}{space_info}{wall}

Run `{run_dir}`: {len(table)} trials ({', '.join(f'{k} {v}' for k, v in states.items())}; {infeasible} over the
FLOPs budget, recorded infeasible without training). Data: pbc28 (PBC peripheral blood cells, the images
BloodMNIST was made from; 8 classes, 28x28 RGB, train 11,966 / val 1,708 / test 3,418, a seeded
class-stratified 70/10/20 split, not MedMNIST's official split, so the published figures below
compare only approximately). The search optimises validation accuracy and FLOPs; test accuracy is
recorded, never used to choose. Training settings and ranges: `search_space/blood_cells.yaml` as committed.

Pareto front over all strategies (validation accuracy against FLOPs):

{markdown_table(["trial", "strategy", "val acc", "test acc", "MFLOPs", "params", "image used"], front_rows)}

Best trial of each strategy (by validation accuracy):

{markdown_table(["strategy", "trials", "val acc", "test acc", "MFLOPs", "MFLOPs range tried", "mean trial (min)"], per_strategy)}

Within a FLOPs budget: the model a user would pick (most accurate on validation, its test accuracy
beside), the highest test accuracy present in the budget, and the best sparse against the best dense
model:

{markdown_table(["MFLOPs", "trials", "pick (by val)", "best test acc present", "best sparse", "best dense"], budget_rows)}

Published BloodMNIST figures (MedMNIST v2 test split, 28x28 input; no FLOPs are published: these are
counted with PyTorch's FlopCounterMode at 2 per multiply-accumulate, as our FLOPs are, for the
CIFAR-stem ResNets the MedMNIST "(28)" rows use):

{markdown_table(["model", "test acc", "MFLOPs"], [[n, pct(a), f] for n, a, f in PUBLISHED])}

**Bar: >= {pct(BAR_ACC)} test accuracy at <= {BAR_MFLOPS:g} MFLOPs.** {verdict}

Best sparse model overall: {describe(best_sparse)}. Best dense model overall: {describe(best_dense)}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="read this finished run instead of searching")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pbc28",
                        help="run directory of a new search (default runs/pbc28; it must not hold another run)")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--backend", choices=("ray", "optuna"))
    parser.add_argument("--max-concurrent", type=int)
    parser.add_argument("--command", help="the command to state in the section (default: this script's own)")
    parser.add_argument("--notes", type=Path, help="a markdown file whose text is appended to the section")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    wall = None
    if args.run_dir is not None:
        run_dir, command = args.run_dir, args.command or f"python benchmarks/bench_real_cells.py --run-dir {args.run_dir}"
        if not (run_dir / "trials.csv").exists():
            raise SystemExit(f"{run_dir}: no trials.csv")
    else:
        path = data_path()
        if not path.exists():
            print(f"skipped: pbc28.npz not found at {path} (set PBC28_NPZ=/path/to/pbc28.npz)")
            return
        if (Path(args.out) / "study.journal").exists():
            raise SystemExit(f"{args.out} already holds a run: read it with --run-dir {args.out}, or pass another --out")
        run_dir, command, wall = run_search(args)
        command = args.command or command
    body = section(run_dir, command, wall)
    if args.notes is not None and args.notes.exists():
        body += "\n" + args.notes.read_text()
    print(body)
    if not args.no_write:
        write_section("real_cells", "Real cells: pbc28 (BloodMNIST-style) front against published figures", body)


if __name__ == "__main__":
    main()
