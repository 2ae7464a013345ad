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
against the best dense model in each budget (in words, with the share of each frame the cells and their
neighbours cover, measured on the validation images: the figure that decides whether skipping pixels
can pay), and whether the front holds a model at or above 96.6% test accuracy (Google AutoML Vision on
BloodMNIST) at no more than 10 MFLOPs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, stamp, write_section  # noqa: E402
from _front import (  # noqa: E402
    DENSE,
    SPARSE,
    best_in,
    content_fraction,
    describe,
    eligible,
    family_gap,
    front,
    no_trials,
    pct,
    raw_images,
    result_tables,
    retrain_seeds,
    run_summary,
    search_or_read,
    search_parser,
    sparse_vs_dense,
    synthetic_content_share,
)

from cellsparse.rundir import read_trials  # noqa: E402

BUDGETS_MFLOPS = (1, 5, 20, 100)
BAR_ACC, BAR_MFLOPS = 0.966, 10.0
PUBLISHED = [  # BloodMNIST (MedMNIST v2) test split, 28x28 input; FLOPs from /work/shared/data/README.md
    ("ResNet-18 (28), MedMNIST v2", 0.958, "~910"),
    ("ResNet-50 (28), MedMNIST v2", 0.956, "~2,100"),
    ("AutoKeras, MedMNIST v2", 0.961, "not published"),
    ("Google AutoML Vision, MedMNIST v2", 0.966, "not published"),
]


BUDGET_INTRO = """Within a FLOPs budget: the model a user would pick (most accurate on validation, its test accuracy
beside), the highest test accuracy present in the budget, and the best sparse against the best dense
model:"""


def data_path() -> Path:
    """PBC28_NPZ (relative to the current directory), else the space file's default, which the search
    (run from the project root) resolves to ../shared/data/pbc28.npz beside the project."""
    if os.environ.get("PBC28_NPZ"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["PBC28_NPZ"]))).resolve()
    return (ROOT / ".." / "shared" / "data" / "pbc28.npz").resolve()


def pbc28_content_share() -> float | None:
    """Share of a pbc28 validation frame that is not background (None where the file is absent)."""
    from runner.data import load_dataset

    path = data_path()
    if not path.exists():
        return None
    return content_fraction(raw_images(load_dataset(source="npz", path=path, seed=0)))


def bar_verdict(frame: pd.DataFrame) -> str:
    par = front(frame)
    bar = frame[(frame["flops"] <= BAR_MFLOPS * 1e6) & (frame["test_accuracy"] >= BAR_ACC)]
    bar_front = par[(par["flops"] <= BAR_MFLOPS * 1e6) & (par["test_accuracy"] >= BAR_ACC)]
    if not bar_front.empty:
        return (f"**Met.** The front holds {len(bar_front)} model(s) at or above {pct(BAR_ACC)} test accuracy at no "
                f"more than {BAR_MFLOPS:g} MFLOPs, e.g. {describe(bar_front.iloc[0])}.")
    verdict = (f"**Not met.** No model on the front reaches {pct(BAR_ACC)} test accuracy at no more than "
               f"{BAR_MFLOPS:g} MFLOPs; the most accurate (by validation) within {BAR_MFLOPS:g} MFLOPs is "
               f"{describe(best_in(frame, BAR_MFLOPS))}.")
    if not bar.empty:
        verdict += (f" ({len(bar)} trial(s) off the front do reach it on the test split, e.g. "
                    f"{describe(bar.sort_values('flops').iloc[0])}, but validation accuracy, which the search "
                    "optimises, does not pick them.)")
    return verdict


def bar_pick(frame: pd.DataFrame) -> pd.Series | None:
    """The model the bar is judged on: the cheapest front model that passes it, else the most accurate
    (by validation) within the bar's FLOPs."""
    par = front(frame)
    passing = par[(par["flops"] <= BAR_MFLOPS * 1e6) & (par["test_accuracy"] >= BAR_ACC)]
    return passing.iloc[0] if not passing.empty else best_in(frame, BAR_MFLOPS)


def seed_text(rows: list[dict[str, float]] | None) -> str:
    """Table and one sentence: the bar's model re-trained with other training seeds."""
    if not rows:
        return ""
    tests = pd.Series([r["test"] for r in rows])
    vals = pd.Series([r["val"] for r in rows])
    above = int((tests >= BAR_ACC).sum())
    table = markdown_table(["training seed", "val acc", "test acc"],
                           [[int(r["seed"]), pct(r["val"]), pct(r["test"])] for r in rows])
    extra = len(rows) - 1
    return (f"Seed spread of that model (its config re-trained with {extra} other training seed{'s' * (extra != 1)}: "
            f"initialisation, batch order and augmentation; same data split): test {pct(tests.mean())} +- "
            f"{100 * tests.std():.2f} points (val {pct(vals.mean())} +- {100 * vals.std():.2f}), {above} of {len(rows)} "
            f"seeds at or above {pct(BAR_ACC)}.\n\n{table}")


def in_short(frame: pd.DataFrame, content: float | None, seeds: list[dict[str, float]] | None = None) -> str:
    """The section in plain words: the bar, where sparse stands against dense, and why."""
    par = front(frame)
    passing = par[(par["flops"] <= BAR_MFLOPS * 1e6) & (par["test_accuracy"] >= BAR_ACC)]
    pick = bar_pick(frame)
    bar = (f"the front holds a model above the {pct(BAR_ACC)} bar within {BAR_MFLOPS:g} MFLOPs" if not passing.empty
           else f"the {pct(BAR_ACC)} bar within {BAR_MFLOPS:g} MFLOPs is not met")
    text = f"**In short:** on real blood cells (pbc28, 28 px) {bar}"
    if pick is not None:
        text += (f": {pick['strategy']}, {pct(pick['test_accuracy'])} test at {pick['flops'] / 1e6:.2f} MFLOPs, against "
                 "Google AutoML Vision's 96.60% and ResNet-18 (28)'s 95.80% at ~910 MFLOPs")
    if seeds:
        tests = pd.Series([r["test"] for r in seeds])
        text += f" ({pct(tests.mean())} +- {100 * tests.std():.2f} over {len(seeds)} training seeds)"
    text += ". " + family_gap(frame)
    if content is not None:
        text += f" {100 * content:.0f}% of each frame is content, so skipping pixels skips mostly cell."
    return text


def why(frame: pd.DataFrame, content: float | None) -> str:
    """The measured reasons: how much of a frame is content here and on 64-px synthetic frames, and how
    cheap the dense models on the front already are."""
    if content is None:
        return ""
    dense_front = front(frame)
    dense_front = dense_front[dense_front["strategy"].isin(DENSE)]
    cost = (f" The dense models on the front cost {dense_front['flops'].min() / 1e6:.2f}-"
            f"{dense_front['flops'].max() / 1e6:.2f} MFLOPs, which leaves a sparse model little to save."
            if not dense_front.empty else "")
    return (f"Why: {100 * content:.0f}% of a pbc28 frame is content (the cell and the red cells around it: pixels "
            f"more than 0.1 away from the frame's border colour in any channel, validation images), against "
            f"{100 * synthetic_content_share(64):.0f}% of a 64-px synthetic frame, so at 28 px a model that skips "
            f"pixels skips mostly cell.{cost}")


def section(run_dir: Path, command: str, wall_s: float | None, content: float | None, reseed: int = 0) -> str:
    table = read_trials(run_dir / "trials.csv")
    frame = eligible(table)
    if frame.empty:
        return no_trials(run_dir, table, command)
    wall = f" Measured wall time of this script's search: {wall_s / 60:.1f} min." if wall_s else ""
    best_sparse, best_dense = best_in(frame, 1e9, SPARSE), best_in(frame, 1e9, DENSE)
    pick = bar_pick(frame)
    seeds = retrain_seeds(run_dir, int(pick["number"]), reseed) if reseed and pick is not None else None
    return f"""\
{stamp(command)}

{run_summary(run_dir, table)}{wall} Data: pbc28 (PBC peripheral blood cells, the images BloodMNIST was made
from; 8 classes, 28x28 RGB, train 11,966 / val 1,708 / test 3,418, a seeded class-stratified 70/10/20
split, not MedMNIST's official split, so the published figures below compare only approximately). The
search optimises validation accuracy and FLOPs; test accuracy is recorded, never used to choose.
Training settings and ranges: `search_space/blood_cells.yaml` as committed.

{in_short(frame, content, seeds)}

**Bar: >= {pct(BAR_ACC)} test accuracy at <= {BAR_MFLOPS:g} MFLOPs.** {bar_verdict(frame)}

{seed_text(seeds)}

{result_tables(run_dir, frame, BUDGETS_MFLOPS, BUDGET_INTRO)}

{sparse_vs_dense(run_dir, frame, BUDGETS_MFLOPS, "At 28 px on real cells")}

{why(frame, content)}

Best sparse model overall: {describe(best_sparse)}. Best dense model overall: {describe(best_dense)}.

Published BloodMNIST figures (MedMNIST v2 test split, 28x28 input; no FLOPs are published: these are
counted with PyTorch's FlopCounterMode at 2 per multiply-accumulate, as our FLOPs are, for the
CIFAR-stem ResNets the MedMNIST "(28)" rows use):

{markdown_table(["model", "test acc", "MFLOPs"], [[n, pct(a), f] for n, a, f in PUBLISHED])}
"""


def main() -> None:
    parser = search_parser(__doc__, ROOT / "runs" / "pbc28")
    parser.add_argument("--command", help="the command to state in the section (default: this script's own)")
    parser.add_argument("--reseed", type=int, default=0, metavar="N",
                        help="re-train the model the bar is judged on with N other training seeds (2 at a time; "
                        "about 3-5 min each on one core for a small CNN) and report the spread")
    parser.add_argument("--notes", type=Path, help="a markdown file whose text is appended to the section")
    args = parser.parse_args()

    path = data_path()
    if args.run_dir is None and not path.exists():
        print(f"skipped: pbc28.npz not found at {path} (set PBC28_NPZ=/path/to/pbc28.npz)")
        return
    run_dir, command, wall = search_or_read(args, "search_space/blood_cells.yaml", "bench_real_cells.py",
                                            {"PBC28_NPZ": str(path)})
    command = args.command or command
    body = section(run_dir, command, wall, pbc28_content_share(), args.reseed)
    if args.notes is not None and args.notes.exists():
        body += "\n" + args.notes.read_text()
    print(body)
    if not args.no_write:
        write_section("real_cells", "Real cells: pbc28 (BloodMNIST-style) front against published figures", body)


if __name__ == "__main__":
    main()
