"""How a command is spelt for the person who will type it: the way this process was started."""

from __future__ import annotations

import pytest

from cellsparse.commands import command, started_as_module


@pytest.mark.parametrize(("argv0", "module"), [
    ("/repo/runner/search.py", True),
    ("/repo/reports/build.py", True),
    ("/repo/runner/export/__main__.py", True),
    ("/repo/runner/predict.py", True),
    ("/venv/bin/cellsparse", False),
    ("/repo/runner/cli.py", False),  # python -m runner.cli is the cellsparse command
    ("/venv/bin/pytest", False),  # from Python: the installed command
    ("", False),
])
def test_started_as_module(argv0: str, module: bool) -> None:
    assert started_as_module(argv0) is module


def test_command_quotes_its_arguments() -> None:
    assert command("export", "runs/my run", "--trial", "3", argv0="/venv/bin/cellsparse") == \
        "cellsparse export 'runs/my run' --trial 3"
    assert command("search", "--out", "runs/x", "--resume", argv0="/r/runner/search.py") == \
        "python -m runner.search --out runs/x --resume"
    assert command("report", argv0="/r/runner/export/__main__.py") == "python -m reports.build"
