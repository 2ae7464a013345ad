"""The commands of this project, and how to spell one for the person who will type it.

Every step is a ``cellsparse`` subcommand and also a ``python -m`` module. What the program tells
the user to run next (the resume hint, the export command, usage lines, the report's pick box) is
spelt the way this process was started: ``cellsparse export ...`` after ``cellsparse search``,
``python -m runner.export ...`` after ``python -m runner.search``. From Python (the API, a notebook)
the ``cellsparse`` form is used: it is the command the install puts on the PATH.

Torch-free, so the report (which does not import the runner) spells its commands the same way.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

PROG = "cellsparse"
#: subcommand -> (module with main(argv), one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "search": ("runner.search", "run a multi-objective search over a space file"),
    "report": ("reports.build", "(re)build a run's HTML report"),
    "export": ("runner.export", "export a trained model of a run (ONNX, .pt2, model card)"),
    "predict": ("runner.predict", "classify images with an exported model"),
}


def _module_of(path: str) -> str | None:
    """The module a ``python -m`` start ran, from ``sys.argv[0]`` (a file path), or None."""
    parts = Path(path).with_suffix("").parts
    for name, (module, _) in COMMANDS.items():
        tail = tuple(module.split("."))
        if parts[-len(tail):] == tail or parts[-len(tail) - 1:] == (*tail, "__main__"):
            return name
    return None


def started_as_module(argv0: str | None = None) -> bool:
    """Whether this process was started as ``python -m <module>`` of one of the steps (not as the
    ``cellsparse`` command, and not from Python)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if not argv0 or os.path.basename(argv0) == PROG:
        return False
    return _module_of(argv0) is not None


def command(name: str, *args: str | Path, argv0: str | None = None) -> str:
    """``name``'s command line as the user should type it, with ``args`` shell-quoted:
    ``cellsparse export runs/cells`` or ``python -m runner.export runs/cells``."""
    module = COMMANDS[name][0]
    head = f"python -m {module}" if started_as_module(argv0) else f"{PROG} {name}"
    return " ".join([head, *(shlex.quote(str(a)) for a in args)])


def run_command(main: Callable[[], int | None]) -> int:
    """``main()``'s exit status, its output flushed. Output piped into a reader that stops early
    (``| head``) ends the command quietly with status 1, as other command-line tools end, not with a
    traceback."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the interpreter's own flush at exit
        return 1
    return int(status or 0)


EXIT_USER_ERROR = 2


class CommandParser(argparse.ArgumentParser):
    """argparse for a command of this project: a bad flag is one ``error: ...`` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def command_parser(module: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The parser of ``python -m module`` and of its ``cellsparse`` subcommand; its usage line is spelt
    the way this process was started (``cellsparse.commands.command``). A module that is no subcommand
    (the data builders) is ``python -m module``."""
    name = next((n for n, (m, _) in COMMANDS.items() if m == module), None)
    return CommandParser(prog=f"python -m {module}" if name is None else command(name), description=description,
                         epilog=epilog)


def print_error(err: BaseException) -> None:
    """A user error (or a failed export) as one ``error: ...`` line on stderr, without a traceback."""
    print("error: " + " ".join(str(err).split("\n")), file=sys.stderr)
