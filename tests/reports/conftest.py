"""Run directories written in the runner's layout, and their reports, shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.build import build_report

from .fake_run import write_run


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 trials over 5 strategies: 1 failed, 1 pruned, 2 over the FLOPs budget; report built."""
    run_dir = write_run(tmp_path_factory.mktemp("runs"), "demo")
    build_report(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Script tags in the run name, a class name, a config value and an error message; report built."""
    run_dir = write_run(tmp_path_factory.mktemp("runs"), hostile=True)
    build_report(run_dir)
    return run_dir
