"""Reading a finished run for the benchmark sections: its eligible trials, its accuracy/FLOPs front,
the model a user would pick within a FLOPs budget, sparse against dense strategies, and how much of a
frame the cells cover (the figure that decides whether looking at fewer pixels can pay).

Shared by bench_real_cells.py (pbc28, 28 px) and bench_sparse_vs_dense.py (synthetic, 64 px), so the
two sections answer the same questions in the same words.
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
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _doc import markdown_table, stamp  # noqa: E402

from cellsparse.pareto import pareto_mask  # noqa: E402
from cellsparse.rundir import eligible_mask  # noqa: E402
from runner.data.dataset import CellDataset  # noqa: E402
from search_space.strategies import get_strategy, strategy_names  # noqa: E402

# Which strategies are sparse is the registry's fact (each strategy's registration says so).
SPARSE = tuple(name for name in strategy_names() if get_strategy(name).sparse)
DENSE = tuple(name for name in strategy_names() if not get_strategy(name).sparse)


def eligible(table: pd.DataFrame) -> pd.DataFrame:
    """COMPLETE trials within the run's constraints, with numeric accuracy/FLOPs columns."""
    frame = table[eligible_mask(table, ["accuracy", "flops"])].copy()
    for col in ("accuracy", "flops", "test_accuracy"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame.dropna(subset=["accuracy", "flops"])


def front(frame: pd.DataFrame) -> pd.DataFrame:
    """Pareto front of validation accuracy (max) against FLOPs (min), cheapest first."""
    mask = pareto_mask(frame[["accuracy", "flops"]].to_numpy(float), ["maximize", "minimize"])
    return frame[mask].sort_values("flops")


def pct(x: float | None) -> str:
    return "-" if x is None or pd.isna(x) else f"{100 * x:.2f}%"


def used_fraction(run_dir: Path, number: int) -> float | None:
    """Share of the image the trial's model looked at (metrics.json ``used_fraction``; 1 for dense)."""
    path = run_dir / "trials" / str(number) / "metrics.json"
    try:
        value = json.loads(path.read_text()).get("used_fraction")
    except (OSError, ValueError):
        return None
    return None if value is None else float(value)


def share(x: float | None) -> str:
    return "-" if x is None or pd.isna(x) else f"{100 * x:.0f}%"


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


def front_rows(run_dir: Path | None, frame: pd.DataFrame) -> list[list[object]]:
    """Rows of the front table: trial, strategy, val, test, MFLOPs, params, share of image used (the
    frame's ``used_fraction`` column where it has one, else each trial's metrics.json in ``run_dir``)."""
    def used(r: pd.Series) -> float | None:
        if "used_fraction" in r.index or run_dir is None:
            return r.get("used_fraction")
        return used_fraction(run_dir, int(r["number"]))

    return [[int(r["number"]), r["strategy"], pct(r["accuracy"]), pct(r["test_accuracy"]), f"{r['flops'] / 1e6:.2f}",
             f"{int(r['params_count']):,}", share(used(r))]
            for _, r in front(frame).iterrows()]


FRONT_HEADER = ["trial", "strategy", "val acc", "test acc", "MFLOPs", "params", "image used"]


def front_tables(run_dir: Path, frame: pd.DataFrame) -> str:
    """The front over all strategies, then the front of the sparse strategies alone and of the dense
    baselines alone: each family's own trade-off curve, also where the other dominates it."""
    parts = []
    for title, strategies in (("all strategies", None), ("the sparse strategies alone", SPARSE),
                              ("the dense baselines alone", DENSE)):
        sub = frame if strategies is None else frame[frame["strategy"].isin(strategies)]
        if not sub.empty:
            parts.append(f"Pareto front of {title} (validation accuracy against FLOPs):\n\n"
                         + markdown_table(FRONT_HEADER, front_rows(run_dir, sub)))
    return "\n\n".join(parts)


def per_strategy_rows(frame: pd.DataFrame) -> list[list[object]]:
    """Best trial of each strategy (by validation accuracy), with how many were tried and at what cost."""
    rows = []
    for name, group in frame.groupby("strategy"):
        best = group.sort_values(["accuracy", "flops"], ascending=[False, True]).iloc[0]
        rows.append([name, len(group), pct(best["accuracy"]), pct(best["test_accuracy"]), f"{best['flops'] / 1e6:.2f}",
                     f"{group['flops'].min() / 1e6:.2f}-{group['flops'].max() / 1e6:.2f}",
                     f"{pd.to_numeric(group['duration_s'], errors='coerce').mean() / 60:.1f}"])
    return rows


PER_STRATEGY_HEADER = ["strategy", "trials", "val acc", "test acc", "MFLOPs", "MFLOPs range tried", "mean trial (min)"]


def budget_rows(frame: pd.DataFrame, budgets: tuple[float, ...]) -> list[list[object]]:
    """Per budget: the pick by validation, the best test accuracy present, best sparse and best dense."""
    rows = []
    for b in budgets:
        within = frame[frame["flops"] <= b * 1e6]
        top_test = within["test_accuracy"].max() if not within.empty else None
        rows.append([f"<= {b:g}", len(within), describe(best_in(frame, b)), pct(top_test),
                     describe(best_in(frame, b, SPARSE)), describe(best_in(frame, b, DENSE))])
    return rows


BUDGET_HEADER = ["MFLOPs", "trials", "pick (by val)", "best test acc present", "best sparse", "best dense"]


def result_tables(run_dir: Path, frame: pd.DataFrame, budgets: tuple[float, ...],
                  budget_intro: str = "Within a FLOPs budget:") -> str:
    """The front, the best trial of each strategy and the picks within each FLOPs budget, as markdown."""
    return f"""\
{front_tables(run_dir, frame)}

Best trial of each strategy (by validation accuracy):

{markdown_table(PER_STRATEGY_HEADER, per_strategy_rows(frame))}

{budget_intro}

{markdown_table(BUDGET_HEADER, budget_rows(frame, budgets))}"""


def no_trials(run_dir: Path, table: pd.DataFrame, command: str) -> str:
    """The section of a run without a complete, feasible trial."""
    return f"{stamp(command)}\n\nNo complete, feasible trial in `{run_dir}` ({run_summary(run_dir, table)})."


def budget_contests(frame: pd.DataFrame, budgets: tuple[float, ...]) -> list[tuple[float, pd.Series | None, pd.Series | None]]:
    """(budget, best sparse, best dense) for every budget that holds at least one model."""
    picks = [(b, best_in(frame, b, SPARSE), best_in(frame, b, DENSE)) for b in budgets]
    return [(b, s, d) for b, s, d in picks if s is not None or d is not None]


def front_share(frame: pd.DataFrame, budgets: tuple[float, ...]) -> str:
    """'sparse strategies hold N of the M front points, and ... wins in W of the C budgets where both fit.'"""
    par = front(frame)
    both = [(s, d) for _, s, d in budget_contests(frame, budgets) if s is not None and d is not None]
    wins = sum(float(s["accuracy"]) > float(d["accuracy"]) for s, d in both)
    return (f"sparse strategies hold {int(par['strategy'].isin(SPARSE).sum())} of the {len(par)} front points, and the "
            f"best sparse model beats the best dense one in {wins} of the {len(both)} budgets where both fit.")


def sparse_vs_dense(run_dir: Path, frame: pd.DataFrame, budgets: tuple[float, ...], where: str) -> str:
    """Plain-words comparison of the best sparse and best dense model in each budget (validation
    accuracy decides, as in the search; test accuracy beside), and how many front points are sparse."""
    lines = []
    for b, s, d in budget_contests(frame, budgets):
        if d is None:
            lines.append(f"- <= {b:g} MFLOPs: only sparse models fit ({describe(s)}).")
        elif s is None:
            lines.append(f"- <= {b:g} MFLOPs: only dense models were tried or fit ({describe(d)}).")
        else:
            gap_val = 100 * (float(s["accuracy"]) - float(d["accuracy"]))
            gap_test = 100 * (float(s["test_accuracy"]) - float(d["test_accuracy"]))
            ahead = "ahead of" if gap_val > 0 else "behind"
            lines.append(f"- <= {b:g} MFLOPs: best sparse {ahead} best dense by {abs(gap_val):.2f} points on validation "
                         f"({gap_test:+.2f} on test): {describe(s)} against {describe(d)}.")
    par = front(frame)
    used = [u for u in (used_fraction(run_dir, int(n)) for n in par[par["strategy"].isin(SPARSE)]["number"]) if u is not None]
    used_text = (f" The sparse models on the front looked at {share(min(used))}-{share(max(used))} of the image."
                 if used else "")
    return f"**{where}: {front_share(frame, budgets)}**{used_text}\n\n" + "\n".join(lines)


def family_gap(frame: pd.DataFrame) -> str:
    """One sentence: the best sparse model overall against the best dense one (validation picks)."""
    s, d = best_in(frame, float("inf"), SPARSE), best_in(frame, float("inf"), DENSE)
    if s is None or d is None:
        return f"Only {'dense' if s is None else 'sparse'} models completed."
    gap = 100 * (float(s["test_accuracy"]) - float(d["test_accuracy"]))
    cost = float(s["flops"]) / float(d["flops"])
    side = "ahead of" if gap > 0 else "behind"
    return (f"The best sparse model ({s['strategy']}, {pct(s['test_accuracy'])} test at {s['flops'] / 1e6:.2f} MFLOPs) is "
            f"{abs(gap):.2f} points {side} the best dense one ({d['strategy']}, {pct(d['test_accuracy'])} at "
            f"{d['flops'] / 1e6:.2f} MFLOPs) at {cost:.2f}x its FLOPs.")


def content_fraction(images: torch.Tensor, threshold: float = 0.1) -> float:
    """Mean share of a frame's pixels that are not background, for images in [0, 1], (N, C, H, W).

    Background is each image's per-channel median over its one-pixel border; a pixel is content when
    any channel differs from it by more than ``threshold``. Neighbouring cells and debris count as
    content: they are pixels a model must look at to tell them apart from the cell."""
    x = images.float()
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    content = (x - background).abs().amax(dim=1) > threshold
    return float(content.float().mean())


def raw_images(data: CellDataset, split: str = "val") -> torch.Tensor:
    """A split in its loader's value scale (float32; uint8 storage scaled as ``runner.data.images`` says)."""
    x, _ = data.split(split)
    return data.normalise(x) * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)


def run_search(space: str, out: Path, flags: dict[str, object | None], env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run ``python -m runner.search --space SPACE --out OUT`` (plus the flags that are set) from the
    project root; return the command as a user would type it and the wall time in seconds."""
    cmd = [sys.executable, "-m", "runner.search", "--space", space, "--out", str(out)]
    for flag, value in flags.items():
        if value is not None:
            cmd += [flag, str(value)]
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the search exited with status {code}: {' '.join(cmd)}")
    return "python -m runner.search " + " ".join(cmd[3:]), wall


SEARCH_FLAGS = ("trials", "backend", "max_concurrent", "cpus_per_trial", "gpus_per_trial")


def search_parser(description: str, default_out: Path) -> argparse.ArgumentParser:
    """Flags of a benchmark that runs a search (or reads a finished run): --run-dir, --out, the search's
    own flags and --no-write."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="read this finished run instead of searching")
    parser.add_argument("--out", type=Path, default=default_out,
                        help=f"run directory of a new search (default {default_out.relative_to(ROOT)}; it must not "
                        "hold another run)")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--backend", choices=("ray", "optuna"))
    parser.add_argument("--max-concurrent", type=int)
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="a fraction packs several trials on one GPU")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    return parser


def search_or_read(args: argparse.Namespace, space: str, script: str,
                   env: dict[str, str] | None = None) -> tuple[Path, str, float | None]:
    """(run directory, the command that made it, the search's wall time or None): ``--run-dir`` read as
    it is, else a new search of ``space`` into ``--out`` with the search flags given."""
    if args.run_dir is not None:
        if not (args.run_dir / "trials.csv").exists():
            raise SystemExit(f"{args.run_dir}: no trials.csv")
        return args.run_dir, f"python benchmarks/{script} --run-dir {args.run_dir}", None
    if (args.out / "study.journal").exists():
        raise SystemExit(f"{args.out} already holds a run: read it with --run-dir {args.out}, or pass another --out")
    flags = {"--" + name.replace("_", "-"): getattr(args, name) for name in SEARCH_FLAGS}
    command, wall = run_search(space, args.out, flags, env)
    return args.out, command, wall


def run_summary(run_dir: Path, table: pd.DataFrame) -> str:
    """One paragraph: when and how the run ran, and what became of its trials."""
    text = ""
    run_json = run_dir / "run.json"
    if run_json.exists():
        info = json.loads(run_json.read_text())
        text = f"Run `{run_dir.name}` started {info.get('started_at', '?')}"
        if info.get("wall_time_s"):
            text += f", search wall time {float(info['wall_time_s']) / 60:.1f} min"
        text += f" ({info.get('backend', '?')} backend, sampler {info.get('sampler', '?')}, seed {info.get('seed', '?')}"
        machine, versions = info.get("machine") or {}, info.get("versions") or {}
        if machine:
            text += (f"; ran on {machine.get('cpus', '?')} CPUs and {machine.get('gpu') or 'no GPU'}, "
                     f"torch {versions.get('torch', '?')}")
        text += ")"
        if info.get("command"):
            text += f", made with `{info['command']}`"
        text += ". "
    states = table["state"].value_counts().to_dict()
    infeasible = int((~table["feasible"]).sum())
    return (text + f"{len(table)} trials ({', '.join(f'{k} {v}' for k, v in states.items())}; {infeasible} over the "
            "FLOPs budget, recorded infeasible without training).")


def synthetic_content_share(image_size: int, n: int = 500) -> float:
    """Share of a synthetic validation frame (brightfield, default difficulty) that is content."""
    from runner.data import load_dataset

    data = load_dataset(source="synthetic", image_size=image_size, train=n, val=n, test=1, seed=0)
    return content_fraction(raw_images(data))


def _retrain(run_dir: str, number: int, seed: int, out: str) -> dict[str, float]:
    """One re-training of trial ``number``'s config with another training seed (same data split)."""
    from runner.engine.datasets import cached_dataset
    from runner.engine.trial import run_trial
    from search_space.spec import load_space

    space = load_space(Path(run_dir) / "space.yaml")
    config = json.loads((Path(run_dir) / "trials" / str(number) / "config.json").read_text())
    metrics = run_trial(config, data=cached_dataset(space), trial_dir=Path(out) / f"seed{seed}",
                        objectives=space.objective_names, augment=space.data.augment, threads=1, seed=seed)
    return {"seed": seed, "val": float(metrics["val_accuracy"]), "test": float(metrics["test_accuracy"])}


def retrain_seeds(run_dir: Path, number: int, extra: int, workers: int = 2) -> list[dict[str, float]]:
    """Trial ``number`` as the search trained it, plus ``extra`` re-trainings with other training seeds
    (initialisation, batch order, augmentation; the data split stays the space's), ``workers`` at a time
    on one thread each: how much of a front model's accuracy is its seed."""
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    from search_space.spec import load_space

    base = load_space(run_dir / "space.yaml").seed + number  # the seed the search trained it with
    metrics = json.loads((run_dir / "trials" / str(number) / "metrics.json").read_text())
    rows = [{"seed": base, "val": float(metrics["val_accuracy"]), "test": float(metrics["test_accuracy"])}]
    seeds = [base + 1000 * i for i in range(1, extra + 1)]
    with tempfile.TemporaryDirectory(prefix="cellsparse-reseed-") as tmp, ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows += list(pool.map(_retrain, [str(run_dir)] * extra, [number] * extra, seeds, [tmp] * extra))
    return rows
