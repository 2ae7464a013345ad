"""Shared helpers for benchmark scripts: the machine line and writing a section of docs/benchmarks.md.

Each script owns one section, delimited by HTML comments, and rewrites only that section, so
scripts can be re-run one at a time without clobbering each other's figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
PBC28_DEFAULT = DOC.parents[1] / ".." / "shared" / "data" / "pbc28.npz"
HEADER = "# Benchmarks\n\nEvery figure here is written by a script in `benchmarks/`; re-run it to refresh its section.\n"


def machine() -> str:
    """One line naming the machine, so figures are never quoted without it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {gpu}; torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"Python {platform.python_version()}; load average {load}"
    )


def own_command(script: str, argv: Sequence[str] | None = None) -> str:
    """How a benchmark script was started, as a user types it: ``python benchmarks/<script> ARGS``
    (``argv`` defaults to this process's arguments; one holding a space is quoted)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([f"python benchmarks/{script}", *(f'"{a}"' if " " in a else a for a in args)])


def stamp(command: str) -> str:
    return f"Machine: {machine()}. Date: {dt.date.today().isoformat()}. Command: `{command}`."


def write_section(name: str, title: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n## {title}\n\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def add_pbc28_argument(parser: argparse.ArgumentParser) -> None:
    """``--data``: pbc28.npz, by default ``$PBC28_NPZ``, else ``../shared/data/pbc28.npz`` beside the project."""
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PBC28_NPZ", PBC28_DEFAULT)),
                        help="pbc28.npz (default: $PBC28_NPZ, else ../shared/data/pbc28.npz)")


def gpu_skip_reason(data: Path, *, needs_cuda: bool = True) -> str | None:
    """The line a GPU benchmark prints when it skips (no CUDA device, or no pbc28.npz at ``data``), else None."""
    if needs_cuda and not torch.cuda.is_available():
        return "skipped: torch sees no CUDA device on this machine"
    return None if data.exists() else f"skipped: pbc28.npz not found at {data} (pass --data or set PBC28_NPZ)"


def machine_record() -> dict[str, object]:
    """The machine record a GPU section starts with: torch, CPUs, Python, date and, where there is one,
    the first CUDA device."""
    record: dict[str, object] = {"torch": torch.__version__, "cpus": os.cpu_count(), "python": platform.python_version(),
                                 "date": dt.date.today().isoformat()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                      cuda=torch.version.cuda)
    return record
