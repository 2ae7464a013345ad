"""The Ray backend's Searcher and TrialScheduler, driven without a Ray cluster: a NaN objective is
told FAIL (not left RUNNING), a trial stopped before its final result is told PRUNED (not COMPLETE
on partial results), a crashed trial is told FAIL with a reason, and early stopping's decision
reaches Tune as STOP."""

from __future__ import annotations

import math

import optuna
import pytest

from tests.runner.search_fixtures import write_space

pytest.importorskip("ray")

from runner.engine.driver import SearchDriver  # noqa: E402
from runner.engine.early_stopping import EarlyStoppingConfig, SuccessiveHalving  # noqa: E402
from runner.engine.ray_tune import DriverScheduler, DriverSearcher  # noqa: E402
from runner.engine.sampler import PAYLOAD_KEY  # noqa: E402 - after the importorskip
from search_space.spec import load_space  # noqa: E402


def make_driver(tmp_path, **kwargs) -> SearchDriver:
    space = load_space(write_space(tmp_path, epochs=9))
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=space.directions,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    driver = SearchDriver(space, tmp_path, study, on_finished=lambda study, number: driver.finished.append(number), **kwargs)
    driver.finished = []
    return driver


@pytest.fixture
def searcher(tmp_path) -> DriverSearcher:
    return DriverSearcher(make_driver(tmp_path))


def state_after(search: DriverSearcher, result: dict | None, error: bool = False) -> optuna.trial.FrozenTrial:
    trial_id = f"t{len(search.driver.study.trials)}"
    config = search.suggest(trial_id)
    number = config[PAYLOAD_KEY]["number"]
    search.on_trial_complete(trial_id, result=result, error=error)
    assert search.driver.finished[-1] == number
    return search.driver.study.get_trials()[number]


def test_complete_result_is_told_with_its_extra_figures(searcher) -> None:
    trial = state_after(searcher, {"final": True, "failed": False, "accuracy": 0.5, "flops": 10.0,
                                   "test_accuracy": 0.4, "k_final": 3.0, "params_count": 7, "duration_s": 1.0})
    assert trial.state.name == "COMPLETE" and trial.values == [0.5, 10.0]
    assert trial.user_attrs["test_accuracy"] == 0.4 and trial.user_attrs["k_final"] == 3.0


def test_nan_objective_is_told_fail_not_left_running(searcher) -> None:
    trial = state_after(searcher, {"final": True, "failed": False, "accuracy": math.nan, "flops": 10.0})
    assert trial.state.name == "FAIL" and "not a finite number" in trial.user_attrs["error"]


def test_failed_trial_keeps_its_error(searcher) -> None:
    trial = state_after(searcher, {"final": True, "failed": True, "error": "RuntimeError: boom",
                                   "accuracy": math.nan, "flops": math.nan})
    assert trial.state.name == "FAIL" and trial.user_attrs["error"] == "RuntimeError: boom"


def test_stopped_before_final_result_is_pruned(searcher) -> None:
    trial = state_after(searcher, {"epoch": 1, "accuracy": 0.3, "flops": 10.0})
    assert trial.state.name == "PRUNED"


def test_crashed_trial_is_failed_with_a_reason(searcher) -> None:
    trial = state_after(searcher, None, error=True)
    assert trial.state.name == "FAIL" and "worker died" in trial.user_attrs["error"]


def test_snapshot_does_not_pickle_the_searcher(searcher, tmp_path, monkeypatch) -> None:
    """Ray swaps builtins.print when a worker dies; a snapshot pickling the searcher then failed."""
    import builtins
    import json
    import pickle

    from runner.engine.progress import TrialFinished

    searcher.driver.on_finished = TrialFinished(tmp_path, load_space(write_space(tmp_path)), total=1)
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    searcher.save(str(tmp_path / "searcher.json"))
    assert "study.journal" in json.loads((tmp_path / "searcher.json").read_text())["state"]
    pickle.dumps(searcher.driver.on_finished)  # the progress callback holds no builtins.print


def test_the_scheduler_stops_what_early_stopping_cuts(tmp_path) -> None:
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    driver = make_driver(tmp_path)
    driver.early_stopping = SuccessiveHalving(EarlyStoppingConfig("moasha", 1, 3), directions=driver.space.directions,
                                              max_epochs=9)
    searcher, scheduler = DriverSearcher(driver), DriverScheduler(driver)
    trials = [SimpleNamespace(config=searcher.suggest(f"t{i}")) for i in range(3)]
    decisions = [scheduler.on_trial_result(None, trial, {"epoch": 1, "accuracy": acc, "flops": flops})
                 for trial, (acc, flops) in zip(trials, [(0.8, 1e3), (0.7, 2e3), (0.6, 3e3)], strict=True)]
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.CONTINUE, TrialScheduler.STOP]
    assert scheduler.on_trial_result(None, trials[0], {"final": True, "accuracy": 0.9, "flops": 1e3}) == "CONTINUE"
    searcher.on_trial_complete("t2", result={"epoch": 1, "accuracy": 0.6, "flops": 3e3})
    pruned = driver.study.get_trials()[2]
    assert pruned.state.name == "PRUNED" and pruned.user_attrs["stopped_at_epoch"] == 1
