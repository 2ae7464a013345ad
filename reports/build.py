"""Build a run's HTML report: ``python -m reports.build runs/<name> [--out FILE]``.

Writes one self-contained ``report.html`` (plotly.js inlined, opens offline) into the run directory
or to ``--out``, plus ``trials.parquet`` beside it (when pyarrow is installed) and a copy of
``trials.csv`` when the report goes elsewhere. Bad input prints one ``error: ...`` line, exits 2 and
writes nothing; files are written whole or not at all (temporary file, then rename).

Nothing this command did not write is replaced: a file at ``--out`` must be a report (its head names
the generator, ``GENERATOR_TAG``), and the copies of the trials table go only where none is, or beside
a report being replaced. The run directory's own ``report.html`` is always rebuilt.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cellsparse.commands import EXIT_USER_ERROR, command, command_parser, print_error, run_command
from cellsparse.errors import UserError
from cellsparse.files import atomic_path, write_atomic
from cellsparse.rundir import REPORT_FILE, TRIALS_FILE, read_run

from .page import GENERATOR_TAG, render

__all__ = ["build_report", "main"]


def _parquet_ready(trials: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding mixed types (e.g. a config key that is a number for one strategy and a
    word for another) become text, which Arrow needs; missing stays missing."""
    out = trials.copy()
    for column in out.columns:
        if out[column].dtype == object:
            values = out[column].dropna()
            if len({type(v) for v in values}) > 1:
                out[column] = out[column].map(lambda v: v if pd.isna(v) else str(v))
    return out


def _write_parquet(trials: pd.DataFrame, path: Path) -> bool:
    try:
        import pyarrow  # noqa: F401  (optional: only decides whether the parquet copy is written)
    except ImportError:
        return False
    with atomic_path(path) as tmp:
        _parquet_ready(trials).to_parquet(tmp, index=False)
    return True


PARQUET_FILE = "trials.parquet"


def _is_report(path: Path) -> bool:
    """Whether ``path`` is a report this command wrote: its head names the generator."""
    try:
        with open(path, "rb") as handle:
            return GENERATOR_TAG.encode() in handle.read(1024)
    except OSError:
        return False


def _check_not_theirs(target: Path, run_dir: Path) -> None:
    """UserError when writing the report to ``target`` would replace a file this command did not write."""
    if target.resolve() == (run_dir / REPORT_FILE).resolve():
        return  # the run directory's own report
    replacing = target.exists() or target.is_symlink()
    if replacing and not _is_report(target):
        raise UserError(f"--out {target}: exists and is not a report written by {command('report')}; it is left "
                        "alone: give a new file name")
    if target.parent.resolve() == run_dir.resolve():
        return  # the trials table is the run's own; no copy is made
    for name in (TRIALS_FILE, PARQUET_FILE):
        companion = target.parent / name
        if (companion.exists() or companion.is_symlink()) and not replacing:
            raise UserError(f"--out {target}: {companion} is already there and not beside a report this command "
                            "wrote; it is left alone: write the report into another folder")


def build_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of ``run_dir`` (to ``run_dir/report.html`` unless ``out`` is given); return its path.

    Raises UserError, having written nothing, when ``run_dir`` is not a run directory.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    target = Path(out) if out is not None else run_dir / REPORT_FILE
    if target.is_dir():
        raise UserError(f"--out {target}: is a folder; give a file name such as {target / 'report.html'}")
    blocker = next((p for p in target.parents if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(f"--out {target}: {blocker} is a file, not a folder")
    _check_not_theirs(target, run_dir)
    document = render(run)
    write_atomic(target, document.encode("utf-8"))
    beside = target.parent
    if beside.resolve() != run_dir.resolve():
        write_atomic(beside / TRIALS_FILE, (run_dir / TRIALS_FILE).read_bytes())
    _write_parquet(run.trials, beside / PARQUET_FILE)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = command_parser("reports.build", "Build a run's HTML report.",
                            "Exit status: 0 written, 2 bad input (one error: line, nothing written).")
    parser.add_argument("run_dir", type=Path, help="the run directory, e.g. runs/cells")
    parser.add_argument("--out", type=Path, default=None,
                        help="report file (default: <run_dir>/report.html); replaces only a report it wrote")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.run_dir, args.out)
    except UserError as exc:
        print_error(exc)
        return EXIT_USER_ERROR
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
