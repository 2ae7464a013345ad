"""One driver per run directory, end to end: a second search on the same --out, or --resume while the
first driver lives, is one line naming it, exit 2, nothing changed; the lock is given back on every
way out of a search (the end, an error, Ctrl-C)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cellsparse.runlock import LOCK_FILE, RunLock
from runner.search import main
from tests.runner.search_fixtures import finished_run_in_subprocess, run_search_cli, set_env, snapshot, write_space


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


search = run_search_cli


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished two-trial run (its space file and run directory)."""
    return finished_run_in_subprocess(tmp_path_factory.mktemp("finished"))


@pytest.mark.parametrize("how", ["fresh", "resume", "fresh_empty_dir"])
def test_a_second_driver_is_one_line_naming_the_live_one_and_changes_nothing(tmp_path, capsys, finished, how) -> None:
    space, base = finished
    run = tmp_path / "run"
    if how == "fresh_empty_dir":
        run.mkdir()
    else:
        import shutil

        shutil.copytree(base, run)
    with RunLock.acquire(run, command="python -m runner.search --space first.yaml"):
        before = snapshot(run)
        args = ["--out", run, "--resume", "--trials", "3"] if how == "resume" else ["--space", space, "--out", run]
        status, out, err = search(capsys, *args)
        assert status == 2 and out == ""
        assert err.count("\n") == 1 and "in use by a running search" in err
        assert f"pid {os.getpid()}" in err and "first.yaml" in err
        assert snapshot(run) == before


def test_the_lock_is_given_back_at_the_end_and_on_an_error(tmp_path, capsys, monkeypatch) -> None:
    space = write_space(tmp_path, trials=1)
    assert search(capsys, "--space", space, "--out", tmp_path / "ok")[0] == 0
    assert not (tmp_path / "ok" / LOCK_FILE).exists()

    from runner.engine.in_process import InProcessExecutor

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the backend")

    monkeypatch.setattr(InProcessExecutor, "run", broken)
    with pytest.raises(RuntimeError, match="a bug in the backend"):
        main(["--space", str(space), "--out", str(tmp_path / "bug")])
    assert (tmp_path / "bug" / "space.yaml").is_file() and not (tmp_path / "bug" / LOCK_FILE).exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(InProcessExecutor, "run", interrupted)
    status, _, _ = search(capsys, "--space", space, "--out", tmp_path / "stopped")
    assert status == 130 and not (tmp_path / "stopped" / LOCK_FILE).exists()
