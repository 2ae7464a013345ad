"""Sparse against dense where the cell fills a minority of the frame: a search on 64-px synthetic cells.

    python benchmarks/bench_sparse_vs_dense.py                        # runs search_space/cells64.yaml (~30 min, 2 cores)
    python benchmarks/bench_sparse_vs_dense.py --trials 8 --out /tmp/c64
    python benchmarks/bench_sparse_vs_dense.py --run-dir runs/cells64  # reads a finished run

It runs ``python -m runner.search --space search_space/cells64.yaml --out DIR`` (default runs/cells64),
then writes the section "sparse_vs_dense" of docs/benchmarks.md from the run's trials.csv: the front
over all strategies (validation accuracy against FLOPs, test accuracy and the share of the image each
model looked at beside), the best trial of each strategy, the best sparse against the best dense model
within FLOPs budgets of 2, 5, 10, 20 and 50 MFLOPs, in words, and the share of each frame that is
content (cell, neighbours, debris) on these frames, on 32-px synthetic frames and on pbc28 where that
file is present: the figure that decides how much a model can gain by skipping pixels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, stamp, write_section  # noqa: E402
from _front import (  # noqa: E402
    eligible,
    family_gap,
    front_share,
    no_trials,
    result_tables,
    run_summary,
    search_or_read,
    search_parser,
    sparse_vs_dense,
    synthetic_content_share,
)

from cellsparse.rundir import read_trials  # noqa: E402

SPACE = "search_space/cells64.yaml"
BUDGETS_MFLOPS = (2, 5, 10, 20, 50)


def content_rows() -> list[list[object]]:
    """Share of the frame that is content, per dataset (pbc28 only where the file is present)."""
    from bench_real_cells import pbc28_content_share

    rows: list[list[object]] = [[f"synthetic brightfield, {px} px", f"{100 * synthetic_content_share(px):.0f}%"]
                                for px in (64, 32)]
    real = pbc28_content_share()
    if real is not None:
        rows.append(["pbc28 (real, 28 px)", f"{100 * real:.0f}%"])
    return rows


def in_short(run_dir: Path, frame: pd.DataFrame, content: float) -> str:
    """The section in plain words: who holds the front where the cell is small, and by how much."""
    return (f"**In short:** on 64-px synthetic frames, where {100 * content:.0f}% of the pixels are content, "
            f"{front_share(frame, BUDGETS_MFLOPS)} {family_gap(frame)}")


def section(run_dir: Path, command: str, wall_s: float | None) -> str:
    table = read_trials(run_dir / "trials.csv")
    frame = eligible(table)
    if frame.empty:
        return no_trials(run_dir, table, command)
    wall = f" Measured wall time of this script's search: {wall_s / 60:.1f} min." if wall_s else ""
    return f"""\
{stamp(command)}

{in_short(run_dir, frame, synthetic_content_share(64))}

{run_summary(run_dir, table)}{wall} Data: synthetic brightfield cells (5 classes, difficulty 0.5) on a
64x64 frame, train 2,000 / val 500 / test 1,000; settings and ranges in `{SPACE}` as committed
(10 epochs, FLOPs budget 50 MFLOPs). Test accuracy is recorded, never used to choose.

{sparse_vs_dense(run_dir, frame, BUDGETS_MFLOPS, "At 64 px on synthetic cells")}

Share of a frame that is content (pixels more than 0.1 away from the frame's border colour in any
channel, validation images): where it is small a model can skip most pixels and keep the cell.

{markdown_table(["images", "content"], content_rows())}

{result_tables(run_dir, frame, BUDGETS_MFLOPS)}
"""


def main() -> None:
    args = search_parser(__doc__, ROOT / "runs" / "cells64").parse_args()
    run_dir, command, wall = search_or_read(args, SPACE, "bench_sparse_vs_dense.py")
    body = section(run_dir, command, wall)
    print(body)
    if not args.no_write:
        write_section("sparse_vs_dense", "Sparse against dense: 64-px synthetic cells", body)


if __name__ == "__main__":
    main()
