"""README's parameter tables are generated from the strategies' declarations, and kept so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from search_space.describe import END_MARKER, MARKER

ROOT = Path(__file__).resolve().parents[2]


def test_readme_parameter_tables_are_the_strategies_own() -> None:
    """A parameter added to a strategy and not to README's tables fails here, naming the command that
    refreshes them. The tables are made in a fresh interpreter: other tests register strategies of
    their own, which README does not list."""
    fresh = subprocess.run([sys.executable, "-c", "from search_space.describe import strategy_tables; "
                            "print(strategy_tables())"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split(MARKER, 1)[1].split(END_MARKER, 1)[0].strip()
    assert shown == fresh.strip(), "run: python -m search_space.describe --readme README.md"
