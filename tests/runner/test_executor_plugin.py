"""A third executor, written here and nowhere else: trials in a thread pool. Registered by name, it
runs a search through ``cellsparse.search`` with no change to the project, as a plugin would."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import pytest

import cellsparse
from cellsparse.rundir import read_run_json
from runner.engine.driver import SearchDriver
from runner.engine.execute import TrialSettings, execute
from runner.engine.executor import Executor, register_executor
from tests.runner.search_fixtures import set_env, write_space

THREADS_SEEN: set[str] = set()


@register_executor("threads", concurrent=True)
class ThreadPoolExecutorBackend(Executor):
    """Up to ``max_concurrent`` trials at once in threads of this process; the driver is asked and
    told from the calling thread only, epoch reports go through a lock."""

    in_process = True

    def run(self, driver: SearchDriver, *, n_trials: int, session: str) -> None:
        settings = TrialSettings.for_run(self.space, Path(driver.run_dir))
        lock = threading.Lock()

        def work(payload: dict) -> dict:
            THREADS_SEEN.add(threading.current_thread().name)

            def report(row: dict, number: int = int(payload["number"])) -> None:
                with lock:
                    driver.report(number, int(row.get("epoch", 0)), row)

            return execute(payload, settings, report)

        running: dict[Future, int] = {}
        asked = 0
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="trial") as pool:
            while asked < n_trials or running:
                while asked < n_trials and len(running) < self.concurrency:
                    with lock:
                        number, payload = driver.ask()
                    running[pool.submit(work, payload)] = number
                    asked += 1
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    number = running.pop(future)
                    with lock:
                        if future.exception() is not None:
                            driver.fail(number, future.exception())
                        else:
                            driver.complete(number, future.result())


def test_a_third_executor_runs_a_search_through_the_public_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch)
    space = write_space(tmp_path, trials=4, backend="threads", max_concurrent=2)
    run = cellsparse.search(space, out=tmp_path / "run", progress="none")
    assert isinstance(run, cellsparse.Run) and len(run.trials) == 4
    assert set(run.trials["state"]) == {"COMPLETE"}
    assert {name.rpartition("_")[0] for name in THREADS_SEEN} == {"trial"}  # the pool ran them
    assert run.report_path.is_file() and len(run.front) >= 1
    assert cellsparse.load_run(tmp_path / "run").front["number"].tolist() == run.front["number"].tolist()
    assert read_run_json(tmp_path / "run")["finished_at"]  # the run says it is complete


def test_an_unknown_backend_is_one_line_naming_the_registered_ones(tmp_path: Path) -> None:
    space = write_space(tmp_path, trials=1)
    with pytest.raises(cellsparse.UserError, match=r"--backend dask: unknown backend; valid: ray, optuna, threads"):
        cellsparse.search(space, backend="dask", out=tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()
