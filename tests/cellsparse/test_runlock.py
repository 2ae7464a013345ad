"""cellsparse.runlock: one driver per run directory; a stale lock is taken over, a live one named."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellsparse import runlock
from cellsparse.runlock import LOCK_FILE, Holder, RunInUse, RunLock, check_free, this_process


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def _plant(run_dir: Path, holder: Holder, *, age_s: float = 0.0) -> Path:
    path = run_dir / LOCK_FILE
    path.write_text(holder.to_json(), encoding="utf-8")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_the_lock_names_its_holder_and_is_gone_after_release(tmp_path: Path) -> None:
    lock = RunLock.acquire(tmp_path, command="python -m runner.search --out x")
    held = Holder.from_json((tmp_path / LOCK_FILE).read_text())
    assert held is not None and held.pid == os.getpid() and held.command.endswith("--out x") and held.started_at
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]  # the private file it was linked from is gone
    lock.release()
    lock.release()  # idempotent
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_second_driver_gets_one_line_naming_the_live_one(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path, command="first"):
        before = (tmp_path / LOCK_FILE).read_bytes()
        for attempt in (lambda: RunLock.acquire(tmp_path, command="second"), lambda: check_free(tmp_path)):
            with pytest.raises(RunInUse) as info:
                attempt()
            text = str(info.value)
            assert f"pid {os.getpid()}" in text and "first" in text and "in use by a running search" in text
            assert "\n" not in text
        assert (tmp_path / LOCK_FILE).read_bytes() == before  # the refused one changed nothing
        assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_line(tmp_path: Path) -> None:
    dead = dataclasses.replace(this_process("old driver"), pid=_dead_pid(), pid_start=None)
    _plant(tmp_path, dead)
    check_free(tmp_path)  # stale: not in use
    notes: list[str] = []
    with RunLock.acquire(tmp_path, note=notes.append) as lock:
        assert Holder.from_json((tmp_path / LOCK_FILE).read_text()).token == lock.holder.token
    assert len(notes) == 1 and f"pid {dead.pid}" in notes[0] and "is gone" in notes[0] and "took over" in notes[0]


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path: Path) -> None:
    """Same pid, but the process started at another time: the holder is gone, the pid reused."""
    me = this_process("old driver")
    if me.pid_start is None:
        pytest.skip("no /proc here")
    _plant(tmp_path, dataclasses.replace(me, pid_start=me.pid_start - 1))
    notes: list[str] = []
    RunLock.acquire(tmp_path, note=notes.append).release()
    assert "now belongs to another process" in notes[0]


def test_another_hosts_lock_is_live_while_its_heartbeat_is_fresh_and_stale_after(tmp_path: Path) -> None:
    other = dataclasses.replace(this_process("python -m runner.search --resume"), host="node-7", pid=12345)
    _plant(tmp_path, other, age_s=5)
    with pytest.raises(RunInUse, match="pid 12345 on node-7"):
        RunLock.acquire(tmp_path)
    _plant(tmp_path, other, age_s=runlock.STALE_S + 30)
    notes: list[str] = []
    RunLock.acquire(tmp_path, note=notes.append).release()
    assert "no heartbeat for" in notes[0] and "node-7" in notes[0]


@pytest.mark.parametrize("text", ["{half a rec", '{"host": "h", "pid": "12", "token": "t"}', "[1, 2]"])
def test_an_unreadable_lock_is_live_while_fresh(tmp_path: Path, text: str) -> None:
    (tmp_path / LOCK_FILE).write_text(text)
    with pytest.raises(RunInUse, match="unreadable lock file"):
        RunLock.acquire(tmp_path)
    old = time.time() - runlock.STALE_S - 1
    os.utime(tmp_path / LOCK_FILE, (old, old))
    RunLock.acquire(tmp_path, note=lambda _: None).release()


def test_the_heartbeat_touches_the_lock(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path, heartbeat_s=0.05):
        path = tmp_path / LOCK_FILE
        old = time.time() - 1000
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5


def test_release_never_removes_another_drivers_lock(tmp_path: Path) -> None:
    lock = RunLock.acquire(tmp_path, heartbeat_s=0.05, note=lambda _: None)
    other = dataclasses.replace(this_process("other"), host="node-2")
    _plant(tmp_path, other)  # taken over behind its back
    time.sleep(0.3)
    lock.release()
    assert lock.lost and json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node-2"


def test_racing_drivers_end_with_one_holder(tmp_path: Path) -> None:
    """Eight processes take a stale lock at once: exactly one holds it, the others are refused."""
    dead = dataclasses.replace(this_process("dead"), pid=_dead_pid(), pid_start=None)
    _plant(tmp_path, dead)
    code = ("import sys, time; from cellsparse.runlock import RunLock, RunInUse\n"
            "try:\n    lock = RunLock.acquire(sys.argv[1], note=lambda _: None)\n"
            "except RunInUse:\n    sys.exit(2)\ntime.sleep(2); lock.release()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env) for _ in range(8)]
    codes = sorted(p.wait(timeout=60) for p in procs)
    assert codes == [0] + [2] * 7
    assert not (tmp_path / LOCK_FILE).exists()
