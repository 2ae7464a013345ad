"""How big and how slow is the HTML report? Builds synthetic run directories (12 and 200 trials, in
the runner's layout, in a temporary folder), times ``reports.build`` and writes its section of docs/benchmarks.md.

    python benchmarks/bench_report.py [--trials 12 200] [--no-write]

Targets: a 200-trial report under 10 MB that builds in under 20 s on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _doc import machine  # noqa: E402

from reports.build import build_report  # noqa: E402
from tests.reports.fake_run import write_run  # noqa: E402

SIZE_LIMIT_MB = 10.0
TIME_LIMIT_S = 20.0


def bench(n_trials: int, root: Path) -> dict[str, float]:
    run_dir = write_run(root, f"bench{n_trials}", n_trials=n_trials, seed=1)
    build_report(run_dir)  # warm: imports, plotly.js read once
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        out = build_report(run_dir)
        timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reports.build", str(run_dir), "--out", str(root / f"cli{n_trials}.html")],
                   check=True, cwd=REPO, capture_output=True)
    cli = time.perf_counter() - start
    return {"trials": n_trials, "size_mb": out.stat().st_size / 1e6, "build_s": min(timings), "cli_s": cli}


def in_short(rows: list[dict[str, float]]) -> str:
    """The section's plain-words paragraph: size and build time of the largest report measured, against the
    targets (the cold command's time is the one held to the target, as the exit status does)."""
    big = max(rows, key=lambda r: r["trials"])
    size_ok, time_ok = big["size_mb"] <= SIZE_LIMIT_MB, big["cli_s"] <= TIME_LIMIT_S
    within = ("within both targets" if size_ok and time_ok else "over both targets" if not (size_ok or time_ok)
              else f"within the {'size' if size_ok else 'time'} target but over the {'time' if size_ok else 'size'} one")
    text = (f"A {big['trials']:.0f}-trial report is {big['size_mb']:.2f} MB and builds in {big['build_s']:.1f} s "
            f"({big['cli_s']:.1f} s as a cold command), {within} (targets: under {SIZE_LIMIT_MB:g} MB and {TIME_LIMIT_S:g} s).")
    small = min(rows, key=lambda r: r["trials"])
    if small["trials"] < big["trials"]:
        per_trial_kb = (big["size_mb"] - small["size_mb"]) / (big["trials"] - small["trials"]) * 1e3
        share = "most of the size is fixed" if small["size_mb"] >= big["size_mb"] / 2 else "the size grows with the trials"
        text += (f" A {small['trials']:.0f}-trial report is {small['size_mb']:.2f} MB, so {share} "
                 f"({per_trial_kb:.1f} kB per extra trial).")
    return "**In short:** " + text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[12, 200])
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    where = machine()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        rows = [bench(n, Path(tmp)) for n in args.trials]
    lines = [
        "| trials | report size (MB) | build_report (s) | `python -m reports.build` cold (s) |",
        "|---:|---:|---:|---:|",
        *[f"| {r['trials']} | {r['size_mb']:.2f} | {r['build_s']:.2f} | {r['cli_s']:.2f} |" for r in rows],
    ]
    short = in_short(rows)
    for line in lines:
        print(line)
    print(short)
    print(f"machine: {where}")
    failed = [r for r in rows if r["trials"] >= 200 and (r["size_mb"] > SIZE_LIMIT_MB or r["cli_s"] > TIME_LIMIT_S)]
    if not args.no_write:
        doc = [
            "# Report size and build time",
            "",
            short,
            "",
            "Synthetic run directories in the runner's layout (5 strategies; 1 in 12 trials failed, 1 pruned, 2 over",
            "the FLOPs budget, histories and looked-at images for every complete trial), built with",
            "`reports.build`. `build_report` is the best of two warm builds in one process; the cold command",
            "includes Python start-up and imports. Targets for 200 trials: under "
            f"{SIZE_LIMIT_MB:g} MB and {TIME_LIMIT_S:g} s on 2 cores.",
            "",
            *lines,
            "",
            f"Machine: {where}.",
            f"Measured {dt.date.today().isoformat()} with `python benchmarks/bench_report.py`.",
            "",
        ]
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _doc import write_section

        body = "\n".join(line for line in doc if not line.startswith("# "))
        write_section("report", "Report size and build time", body)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
