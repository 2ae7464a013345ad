"""The Optuna searcher the Ray backend uses closes OptunaSearch's traps without a Ray cluster:
a NaN objective is told FAIL (not left RUNNING), a trial stopped before its final result is told
PRUNED (not COMPLETE on partial results), a crashed trial is told FAIL with a reason."""

from __future__ import annotations

import math

import optuna
import pytest

from tests.runner.search_fixtures import write_space

pytest.importorskip("ray")

from runner.backends.ray_backend import RunSearch  # noqa: E402 - after the importorskip
from search_space.spec import load_space  # noqa: E402


@pytest.fixture
def searcher(tmp_path):
    space = load_space(write_space(tmp_path))
    from runner.backends.common import ConfigSampler

    finished: list[int] = []
    storage = optuna.storages.InMemoryStorage()
    search = RunSearch(ConfigSampler(space), metric=["accuracy", "flops"], mode=["max", "min"],
                       sampler=optuna.samplers.RandomSampler(seed=0), study_name="probe", storage=storage,
                       on_finished=lambda study, number: finished.append(number))
    search.finished = finished
    return search


def state_after(search: RunSearch, result: dict | None, error: bool = False) -> optuna.trial.FrozenTrial:
    trial_id = f"t{len(search._ot_trials)}"
    config = search.suggest(trial_id)
    number = config["_cellsparse"]["number"]
    search.on_trial_complete(trial_id, result=result, error=error)
    assert search.finished[-1] == number
    return search._ot_study.get_trials()[number]


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

    from runner.backends.common import TrialFinished

    searcher._on_finished = TrialFinished(tmp_path, load_space(write_space(tmp_path)), total=1)
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    searcher.save(str(tmp_path / "searcher.json"))
    assert "study.journal" in json.loads((tmp_path / "searcher.json").read_text())["state"]
    pickle.dumps(searcher._on_finished)  # the progress callback holds no builtins.print
