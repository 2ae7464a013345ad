"""Stopping a search (Ctrl-C, kill -9 of the driver) and ``--resume``: no completed trial lost or run
twice, interrupted trials marked FAIL and replaced, exactly the requested number of trials in the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellsparse.rundir import check_journal
from tests.runner.search_fixtures import journal_trials, read_trials, set_env, write_space


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    set_env(monkeypatch)
    monkeypatch.setenv("PROBE_SLEEP_S", "0.1")  # 8 steps: every trial takes about a second
    monkeypatch.chdir(tmp_path)


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN instead
    # of raising KeyboardInterrupt: the driver gets Ctrl-C's default handling however the tests were run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.search", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)


def wait_for_complete(run: Path, count: int, process: subprocess.Popen, timeout_s: float = 180) -> None:
    """Poll trials.csv until ``count`` trials are COMPLETE (the driver must still be running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        if (run / "trials.csv").is_file():
            try:
                rows = read_trials(run)
            except (OSError, ValueError):
                rows = []
            if sum(r["state"] == "COMPLETE" for r in rows) >= count:
                return
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {count} complete trials within {timeout_s} s")


def interrupt(tmp_path: Path, *, trials: int, after: int, sig: int) -> tuple[Path, Path, subprocess.Popen]:
    """Start a search of ``trials`` probe trials, send ``sig`` once ``after`` are complete; return the
    space file, the run directory and the driver process."""
    space = write_space(tmp_path, trials=trials, epochs=2, train=128)
    run = tmp_path / "run"
    driver = start("--space", space, "--out", run)
    wait_for_complete(run, after, driver)
    driver.send_signal(sig)
    return space, run, driver


def completed(run: Path, name: str = "probe") -> dict[int, tuple]:
    return {t.number: (t.values, t.datetime_complete) for t in journal_trials(run, name) if t.state.name == "COMPLETE"}


def check_final(run: Path, trials: int, before: dict[int, tuple]) -> None:
    final = journal_trials(run)
    states = [t.state.name for t in final]
    assert states.count("COMPLETE") == trials
    assert set(states) <= {"COMPLETE", "FAIL"}  # nothing left RUNNING
    after = completed(run)
    assert all(after[n] == before[n] for n in before)  # completed trials kept as they were, not re-run
    rows = {int(r["number"]): r for r in read_trials(run)}
    assert sorted(rows) == [t.number for t in final]
    for number, row in rows.items():
        if row["state"] == "FAIL":
            assert row["error"].startswith("interrupted")
        else:
            assert (run / "trials" / str(number) / "metrics.json").is_file()


def test_kill_9_then_resume_finishes_the_requested_trials(tmp_path) -> None:
    _, run, driver = interrupt(tmp_path, trials=5, after=2, sig=signal.SIGKILL)
    driver.wait(timeout=30)
    before = completed(run)
    assert 2 <= len(before) < 5
    assert (run / "driver.lock").is_file()  # a killed driver cannot give its lock back

    resumed = subprocess.run([sys.executable, "-m", "runner.search", "--out", str(run), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"took over the lock of a search that is no longer running (pid {driver.pid}" in resumed.stderr
    assert not (run / "driver.lock").exists()
    check_final(run, 5, before)
    assert "[5/5]" in resumed.stdout and "Pareto front" in resumed.stdout


def test_ctrl_c_stops_cleanly_and_resume_continues(tmp_path) -> None:
    space, run, driver = interrupt(tmp_path, trials=4, after=1, sig=signal.SIGINT)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, output
    assert "continue with: python -m runner.search --out" in output and "--resume" in output
    rows = read_trials(run)
    assert "RUNNING" not in {r["state"] for r in rows}
    assert {t.state.name for t in journal_trials(run)} <= {"COMPLETE", "FAIL"}
    before = completed(run)
    assert os.path.exists(run / "run.json")
    assert not (run / "driver.lock").exists()  # given back on Ctrl-C

    resumed = subprocess.run([sys.executable, "-m", "runner.search", "--space", str(space), "--out", str(run),
                              "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check_final(run, 4, before)


def _search(capsys, *args: str | Path) -> tuple[int, str, str]:
    from runner.search import main

    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_torn_last_journal_line_is_cut_before_resume_appends(tmp_path, monkeypatch, capsys) -> None:
    """A kill in the middle of a journal write leaves a fragment without a newline; resume must not
    append onto it (that made every later read fail with a JSONDecodeError)."""
    monkeypatch.delenv("PROBE_SLEEP_S")
    space = write_space(tmp_path, trials=1)
    run = tmp_path / "run"
    assert _search(capsys, "--space", space, "--out", run)[0] == 0
    journal = run / "study.journal"
    intact = journal.read_bytes()
    fragment = b'{"op_code":5,"worker_id":"w","trial_id":0,"us'
    journal.write_bytes(intact + fragment)
    status, _, err = _search(capsys, "--out", run, "--resume", "--trials", "2")
    assert status == 0, err
    assert f"dropped those {len(fragment)} bytes" in err and str(journal) in err
    assert journal.read_bytes().startswith(intact)
    assert journal.read_bytes().endswith(b"\n") and check_journal(run) is None  # nothing left torn
    assert [t.state.name for t in journal_trials(run)] == ["COMPLETE"] * 2


def test_a_damaged_journal_line_is_one_error_naming_it(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("PROBE_SLEEP_S")
    space = write_space(tmp_path, trials=1)
    run = tmp_path / "run"
    assert _search(capsys, "--space", space, "--out", run)[0] == 0
    journal = run / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"op_code": 4, "trial_id"\n'
    journal.write_bytes(b"".join(lines))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    status, out, err = _search(capsys, "--out", run, "--resume", "--trials", "2")
    assert status == 2 and err.count("\n") == 1 and f"{journal}: line 3 is not a journal record" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_killed_session_counts_in_the_wall_time_up_to_its_last_write(tmp_path) -> None:
    import json

    from cellsparse import rundir
    from search_space.spec import load_space

    space = load_space(write_space(tmp_path, trials=1))
    run = tmp_path / "run"
    run.mkdir()
    first = rundir.start_session(run, space, command=["search"], address=None)  # then killed: never finished
    (run / rundir.JOURNAL_FILE).write_text("{}\n")
    started = first["sessions"][0]["started_at"]
    from datetime import datetime

    last_write = datetime.fromisoformat(started).timestamp() + 125.0
    os.utime(run / rundir.JOURNAL_FILE, (last_write, last_write))
    rundir.start_session(run, space, command=["search", "--resume"], address=None)
    rundir.finish_session(run, wall_time_s=10.0, finished=True)
    info = json.loads((run / rundir.RUN_FILE).read_text())
    killed, resumed = info["sessions"]
    assert killed["wall_time_s"] == 125.0 and killed["ended"].startswith("killed")
    assert resumed["wall_time_s"] == 10.0 and info["wall_time_s"] == 135.0
