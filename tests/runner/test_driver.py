"""The search driver: every way a trial ends reaches the journal the same way, and early stopping's
rung tables survive a resume."""

from __future__ import annotations

import math

import optuna
import pytest

from cellsparse.rundir import ATTR_LAST, ATTR_RUNG, ATTR_STOPPED_AT
from runner.engine.driver import SearchDriver, rebuild_rungs
from runner.engine.early_stopping import EarlyStoppingConfig, SuccessiveHalving
from runner.engine.study import open_study
from search_space.spec import load_space
from tests.runner.search_fixtures import set_env, write_space

State = optuna.trial.TrialState


@pytest.fixture()
def space(monkeypatch, tmp_path):
    set_env(monkeypatch)
    return load_space(write_space(tmp_path, trials=4, epochs=9))


def driver_for(space, run_dir, **kwargs) -> SearchDriver:
    return SearchDriver(space, run_dir, open_study(space, run_dir), **kwargs)


def test_each_ending_is_told_once_and_announced(space, tmp_path) -> None:
    finished = []
    driver = driver_for(space, tmp_path, on_finished=lambda study, n: finished.append(n))
    asked = [driver.ask() for _ in range(3)]
    numbers = [n for n, _ in asked]
    assert numbers == [0, 1, 2] and all(p["config"]["strategy"] == "probe_net" for _, p in asked)
    assert driver.running == numbers

    driver.complete(0, {"accuracy": 0.5, "flops": 1e3, "test_accuracy": 0.4, "k_final": 3})
    try:
        raise RuntimeError("diverged\nsecond line")
    except RuntimeError as err:
        driver.fail(1, err, traceback="Traceback ...\nRuntimeError: diverged")
    driver.complete(2, {"accuracy": math.nan, "flops": 1e3})
    driver.complete(0, {"accuracy": 0.9, "flops": 1.0})  # told already: ignored

    trials = open_study(space, tmp_path).get_trials()
    assert [t.state for t in trials] == [State.COMPLETE, State.FAIL, State.FAIL]
    assert trials[0].values == [0.5, 1e3] and trials[0].user_attrs["test_accuracy"] == 0.4
    assert trials[1].user_attrs["error"] == "RuntimeError: diverged"
    assert (tmp_path / "trials" / "1" / "error.txt").read_text().endswith("RuntimeError: diverged")
    assert "not a finite number" in trials[2].user_attrs["error"]
    assert finished == [0, 1, 2] and driver.running == []


def test_early_stopping_prunes_and_a_resume_rebuilds_the_rungs(space, tmp_path) -> None:
    rule = SuccessiveHalving(EarlyStoppingConfig("moasha", 1, 3), directions=space.directions, max_epochs=9)
    driver = driver_for(space, tmp_path, early_stopping=rule)
    for _ in range(3):
        driver.ask()
    assert not driver.report(0, 1, {"accuracy": 0.8, "flops": 100.0})
    assert not driver.report(1, 1, {"accuracy": 0.7, "flops": 200.0})
    assert not driver.report(0, 2, {"accuracy": 0.85, "flops": 100.0})  # no rung at epoch 2
    assert driver.report(2, 1, {"accuracy": 0.6, "flops": 300.0})  # dominated by both: stop
    driver.prune(2)
    driver.complete(0, {"accuracy": 0.9, "flops": 100.0})

    trials = open_study(space, tmp_path).get_trials()
    pruned = trials[2]
    assert pruned.state == State.PRUNED and pruned.user_attrs[ATTR_STOPPED_AT] == 1
    assert pruned.user_attrs[ATTR_LAST + "accuracy"] == 0.6 and pruned.user_attrs[ATTR_RUNG + "1"] == [0.6, 300.0]

    resumed = SuccessiveHalving(EarlyStoppingConfig("moasha", 1, 3), directions=space.directions, max_epochs=9)
    assert rebuild_rungs(resumed, trials) == 3  # trial 1, still running then, had recorded its rung too
    assert resumed.rung_sizes() == {1: 3, 3: 0}
    assert resumed.record(7, 1, [0.1, 1e6]) and resumed.should_stop(7, 1) is True
