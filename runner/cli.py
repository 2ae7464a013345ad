"""The ``cellsparse`` command: one entry point for the search, the report, export and predict.

    cellsparse search --space search_space/cells.yaml     # = python -m runner.search ...
    cellsparse report runs/cells                          # = python -m reports.build ...
    cellsparse export runs/cells                          # = python -m runner.export ...
    cellsparse predict runs/cells/export cells/           # = python -m runner.predict ...
    cellsparse --version

Each subcommand takes exactly the flags, and gives the exit status, of its ``python -m`` form; what
they share (a bad flag or a user error is one ``error: ...`` line and exit status 2) is here.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from cellsparse.commands import COMMANDS, EXIT_USER_ERROR, PROG, run_command


def version() -> str:
    """The installed distribution's version (the source tree's pyproject version when not installed)."""
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        return found.group(1) if found else "unknown"


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {PROG} [--version] [--help] COMMAND [ARGS ...]", "",
             "Multi-objective AutoML for sparse-attention cell-image classifiers.", "", "commands:"]
    lines += [f"  {name:<{width}s}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", f"'{PROG} COMMAND --help' lists the command's flags. Each command is also "
              "'python -m MODULE' (runner.search, reports.build, runner.export, runner.predict)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else EXIT_USER_ERROR
    if args[0] in ("-V", "--version"):
        print(f"{PROG} {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (see {PROG} --help)",
              file=sys.stderr)
        return EXIT_USER_ERROR
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return run_command(lambda: module.main(rest))
    except SystemExit as exit_:  # argparse's --help and flag errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USER_ERROR)


if __name__ == "__main__":
    sys.exit(run_command(main))
