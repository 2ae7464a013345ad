"""``--ray=skip|only``: run the tests that start Ray apart from the rest (CI runs them as a step of
their own: they are the slow, process-heavy part of the suite)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ray", choices=("include", "skip", "only"), default="include",
                     help="tests marked ray (they start Ray): run them with the rest (default), skip them, or run only them")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mode = config.getoption("--ray")
    if mode == "include":
        return
    keep = [item for item in items if (item.get_closest_marker("ray") is not None) == (mode == "only")]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
