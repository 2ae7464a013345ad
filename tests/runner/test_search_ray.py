"""The Ray Tune backend end to end: a local Ray cluster, trials in worker processes, failures
recorded in the journal, and (slow) resume after the driver is killed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runner.search import main
from tests.runner.search_fixtures import journal_trials, read_trials, set_env, write_space
from tests.runner.test_resume import check_final, completed, start, wait_for_complete

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    set_env(monkeypatch)  # Ray workers inherit PYTHONPATH and CELLSPARSE_PLUGINS from this process
    monkeypatch.chdir(tmp_path)


def test_ray_search_runs_trials_in_parallel_and_records_failures(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PROBE_BEHAVIOURS", "ok,raise,nan,ok")
    space = write_space(tmp_path, trials=4, backend="ray", max_concurrent=2, behaviour="by_trial")
    assert main(["--space", str(space), "--out", "run", "--progress", "epochs"]) == 0
    run = tmp_path / "run"
    rows = read_trials(run)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert rows[1]["error"] == "RuntimeError: probe_net was told to fail"
    assert rows[2]["error"].startswith("NonFiniteLossError: training loss became nan")
    for number in (0, 3):  # trial folders are named by Optuna trial number
        for name in ("config.json", "metrics.json", "history.json", "model.pt", "meta.json", "looked_at.npz"):
            assert (run / "trials" / str(number) / name).is_file()
        assert json.loads((run / "trials" / str(number) / "config.json").read_text())["strategy"] == "probe_net"
    for name in ("space.yaml", "run.json", "study.journal", "trials.csv"):
        assert (run / name).is_file(), name
    assert (run / "ray" / "session-0").is_dir()
    info = json.loads((run / "run.json").read_text())
    assert info["backend"] == "ray" and info["finished_at"]
    out = capsys.readouterr().out
    assert "[4/4]" in out and "Pareto front" in out
    # progress on the ray backend: the same start, epoch and finish lines as in process, with ETAs
    assert re.search(r"^  trial 0 started \(probe_net\): 1 epochs  \| search \d+:\d\d elapsed", out, re.M)
    assert re.search(r"^  trial 3 epoch 1/1  val_acc [\d.]+  loss [\d.]+  \d+:\d\d elapsed, ETA 0:00  \| search ", out, re.M)
    assert re.search(r"^\[4/4\] trial \d .*\(\d+:\d\d; search \d+:\d\d elapsed, ETA 0:00\)$", out, re.M)


def test_a_trial_whose_worker_dies_is_failed_and_the_search_goes_on(tmp_path, monkeypatch, capsys) -> None:
    """A killed worker (SIGKILL mid-trial, as the OOM killer does) makes Ray patch builtins.print; the
    experiment snapshot that follows must still pickle the searcher."""
    monkeypatch.setenv("PROBE_BEHAVIOURS", "ok,die,ok")
    space = write_space(tmp_path, trials=3, backend="ray", max_concurrent=1, behaviour="by_trial")
    assert main(["--space", str(space), "--out", "run"]) == 0
    rows = read_trials(tmp_path / "run")
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "worker died" in rows[1]["error"]
    assert "[3/3]" in capsys.readouterr().out


@pytest.mark.slow
def test_ray_kill_9_then_resume(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PROBE_SLEEP_S", "0.1")  # each trial takes over a second
    space = write_space(tmp_path, trials=5, backend="ray", max_concurrent=2, epochs=2, train=256)
    run = tmp_path / "run"
    driver = start("--space", space, "--out", run)
    wait_for_complete(run, 2, driver, timeout_s=300)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    before = completed(run)
    resumed = subprocess.run([sys.executable, "-m", "runner.search", "--out", str(run), "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check_final(run, 5, before)
    assert len(journal_trials(run)) >= 5


def _marked(mark: str) -> list[int]:
    """Processes (this user's) whose environment holds ``CELLSPARSE_TEST_MARK=mark``: the driver and every
    process Ray started for it inherit it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"CELLSPARSE_TEST_MARK={mark}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find Ray's processes")
def test_sigint_to_the_driver_stops_the_ray_search_with_130(tmp_path, monkeypatch) -> None:
    """kill -INT <driver> on the ray backend: exit 130 with the resume hint, the running trial recorded
    interrupted, no new Tune session, and no process Ray started for the driver left running."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv("CELLSPARSE_TEST_MARK", mark)
    monkeypatch.setenv("PROBE_SLEEP_S", "0.1")  # each trial takes over a second
    space = write_space(tmp_path, trials=6, backend="ray", max_concurrent=1, epochs=2, train=256)
    run = tmp_path / "run"
    driver = start("--space", space, "--out", run)
    wait_for_complete(run, 1, driver, timeout_s=300)
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, output
    assert f"continue with: python -m runner.search --out {run} --resume" in output
    rows = read_trials(run)
    assert len(rows) < 6 and {r["state"] for r in rows} <= {"COMPLETE", "FAIL"}
    assert all(r["error"].startswith("interrupted") for r in rows if r["state"] == "FAIL")
    assert sorted(p.name for p in (run / "ray").iterdir()) == ["session-0"]  # no second session started
    deadline = time.monotonic() + 30
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {pid: (Path("/proc") / str(pid) / "cmdline").read_bytes()[:120] for pid in _marked(mark)}
    assert left == {}, left
