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


@pytest.fixture(scope="session")
def three_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 trials over accuracy, FLOPs and params (reference params = 2M); report built."""
    run_dir = write_run(tmp_path_factory.mktemp("runs"), "three", n_trials=24, objectives=("accuracy", "flops", "params"),
                        reference_point={"params": 2e6})
    build_report(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def searched_three_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real search (the test strategy probe_net, 6 one-epoch trials on 16-px synthetic cells, seconds)
    over accuracy, FLOPs and throughput (eager, as the deploy section says), as ``cellsparse search``
    writes it, report included."""
    # torch and the search load only in the sessions that ask for a searched run
    import yaml

    from runner.search import main as search_main
    from tests.runner.search_fixtures import plugins_env, write_space

    work = tmp_path_factory.mktemp("search")
    space = write_space(work, name="three", trials=6, extra_objectives=", throughput: maximize", max_flops=1e6)
    text = yaml.safe_load(space.read_text(encoding="utf-8"))
    text["search"]["reference_point"] = {"accuracy": 0.0, "flops": 1e6, "throughput": 1.0}
    text["deploy"] = {"runtime": "eager", "batch_size": 8, "threads": 1}
    space.write_text(yaml.safe_dump(text, sort_keys=False), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CELLSPARSE_PLUGINS", plugins_env())
        assert search_main(["--space", str(space), "--out", str(work / "run")]) == 0
    assert (work / "run" / "report.html").is_file()
    return work / "run"
