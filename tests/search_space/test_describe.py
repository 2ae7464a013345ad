"""README's parameter tables are generated from the strategies' declarations, and kept so."""

from __future__ import annotations

from pathlib import Path

from search_space.describe import END_MARKER, MARKER, strategy_tables


def test_readme_parameter_tables_are_the_strategies_own() -> None:
    """A parameter added to a strategy and not to README's tables fails here, naming the command that
    refreshes them."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    shown = readme.split(MARKER, 1)[1].split(END_MARKER, 1)[0].strip()
    assert shown == strategy_tables().strip(), "run: python -m search_space.describe --readme README.md"
