"""One search driver per run directory: ``driver.lock``, held by the live driver.

Two drivers on one run (a second search on the same ``--out``, or ``--resume`` while the first is
still running) would ask and tell trials in the same journal and mark each other's running trials
FAIL. So a driver takes the run's lock before it writes anything there and gives it back on every
way out (the end, an error, Ctrl-C); a second driver gets one line naming the live one and exits
with status 2, having changed nothing.

Why a lock file and not ``fcntl``/``flock``: the run directory may sit on shared storage that every
node of a cluster mounts (NFS, as the cluster how-to in the README says). A POSIX lock there is only
as good as the mount: with ``nolock`` (common on clusters) or on several FUSE and parallel file
systems it is silently local to one host, so two hosts would both "hold" it; and a lock that simply
vanishes with its process cannot say who held it. A lock file is made with ``link(2)`` of a fully
written private file (atomic on NFS, the recipe open(2) gives for NFS; ``O_CREAT|O_EXCL`` where hard
links are not supported), so it appears whole or not at all, and it names its holder: host, pid,
the process's start time and boot, the command, when it started. The holder touches it every
``HEARTBEAT_S`` seconds (its modification time is the heartbeat; on NFS the server stamps it).

A lock is stale, and is taken over with a line saying so, when its holder is provably gone:

* same host (same host name, boot and pid namespace, so its pid means the same process here): the
  pid is gone, or now belongs to a process that started at another time;
* another host (or one whose pids cannot be compared): no heartbeat for ``STALE_S`` seconds. This
  compares the file's time with this host's clock, so the cluster's clocks must agree to well within
  that (NTP does); a driver on another host therefore waits up to ``STALE_S`` after a crash there.

Taking over moves the stale file aside under a private name and checks it is still the file that
was judged stale before deleting it (another driver may have taken over in between: then its fresh
lock is put back), so two drivers racing for a stale lock end with one holder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cellsparse.errors import UserError

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 10.0  # how often the holder touches the lock
STALE_S = 60.0  # another host's lock without a heartbeat for this long is stale
_TRIES = 8


class RunInUse(UserError):
    """The run directory is held by another live driver."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as recorded in it."""

    host: str
    pid: int
    token: str
    started_at: str = ""
    command: str = ""
    boot_id: str | None = None
    pid_ns: int | None = None
    pid_start: int | None = None  # the process's start time in clock ticks since boot (/proc/<pid>/stat)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            holder = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError, KeyError):
            return None
        typed = (isinstance(holder.host, str) and isinstance(holder.token, str) and type(holder.pid) is int
                 and all(v is None or type(v) is int for v in (holder.pid_ns, holder.pid_start)))
        return holder if typed else None

    def same_pid_space(self, other: Holder) -> bool:
        """Whether this holder's pid names the same process on ``other``'s host."""
        return (self.host == other.host and self.boot_id is not None and self.boot_id == other.boot_id
                and self.pid_ns is not None and self.pid_ns == other.pid_ns)

    def describe(self) -> str:
        what = f"pid {self.pid} on {self.host}"
        if self.started_at:
            what += f", started {self.started_at}"
        if self.command:
            command = self.command if len(self.command) <= 80 else self.command[:77] + "..."
            what += f": {command}"
        return what


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def _boot_id() -> str | None:
    text = _read_text(Path("/proc/sys/kernel/random/boot_id"))
    return text.strip() or None if text else None


def _pid_ns() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """A process's start time (clock ticks after boot), or None when unknown or gone."""
    text = _read_text(Path(f"/proc/{pid}/stat"))
    if not text:
        return None
    try:
        return int(text[text.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    except OSError:
        return False
    return True


def this_process(command: str = "") -> Holder:
    """The holder record of this process."""
    return Holder(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                  started_at=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"), command=command,
                  boot_id=_boot_id(), pid_ns=_pid_ns(), pid_start=_start_ticks(os.getpid()))


def stale_reason(holder: Holder | None, age_s: float, me: Holder, *, stale_after_s: float = STALE_S) -> str | None:
    """Why a lock held by ``holder`` (None: unreadable), last touched ``age_s`` seconds ago, is stale
    as seen by ``me``; None while its holder may be alive."""
    if holder is not None and holder.same_pid_space(me):
        if not _pid_alive(holder.pid):
            return f"its process (pid {holder.pid}) is gone"
        if holder.pid_start is not None and _start_ticks(holder.pid) not in (None, holder.pid_start):
            return f"pid {holder.pid} now belongs to another process"
        return None
    if age_s > stale_after_s:
        where = f"on {holder.host}" if holder is not None else "unreadable lock file"
        return f"no heartbeat for {age_s:.0f} s ({where}; stale after {stale_after_s:.0f} s)"
    return None


def _seen(path: Path) -> tuple[str, float] | None:
    """The lock's text and its age in seconds, or None when there is none."""
    try:
        mtime = path.stat().st_mtime
    except OSError:  # none there (or no folder: the run directory's own checks say so)
        return None
    text = _read_text(path)
    return None if text is None else (text, max(0.0, time.time() - mtime))


def _create(path: Path, text: str) -> bool:
    """Make ``path`` holding ``text``, atomically, unless it exists: True when this call made it."""
    private = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with open(private, "x", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(private, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            return _create_exclusive(path, text)  # no hard links on this file system
        try:  # NFS: link may report failure after it succeeded (a retransmitted request)
            return os.stat(private).st_nlink == 2
        except OSError:
            raise err from None
    finally:
        private.unlink(missing_ok=True)


def _create_exclusive(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


def _remove_if(path: Path, text: str) -> bool:
    """Remove the lock if it still holds ``text`` (moved aside first, so nobody else's lock is
    deleted); True when removed. Another's lock found there instead is put back."""
    aside = path.with_name(f".{path.name}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if _read_text(aside) == text:
        aside.unlink(missing_ok=True)
        return True
    with contextlib.suppress(OSError):
        os.link(aside, path)  # not the one judged: somebody's fresh lock; back it goes
    aside.unlink(missing_ok=True)
    return False


def _refusal(run_dir: Path, holder: Holder | None, age_s: float) -> RunInUse:
    who = holder.describe() if holder is not None else "an unreadable lock file"
    return RunInUse(f"{run_dir} is in use by a running search ({who}; last heartbeat {age_s:.0f} s ago); one "
                    f"driver per run: wait for it to end or stop it (a stale {LOCK_FILE} of a stopped search is "
                    "taken over by itself)")


def check_free(run_dir: Path, *, stale_after_s: float = STALE_S) -> None:
    """RunInUse when a live driver holds ``run_dir``; reads only (a stale lock is left for ``acquire``)."""
    seen = _seen(Path(run_dir) / LOCK_FILE)
    if seen is None:
        return
    holder = Holder.from_json(seen[0])
    if stale_reason(holder, seen[1], this_process(), stale_after_s=stale_after_s) is None:
        raise _refusal(Path(run_dir), holder, seen[1])


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class RunLock:
    """The lock of one run directory, held by this process (see the module docstring).

    ``with RunLock.acquire(run_dir):`` holds it for the block; ``release`` is idempotent and only
    ever removes this process's own lock."""

    def __init__(self, run_dir: Path, holder: Holder, *, heartbeat_s: float, note: Callable[[str], None]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.holder = holder
        self.text = holder.to_json()
        self.note = note
        self.lost = False
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), name="cellsparse-run-lock",
                                      daemon=True)

    @classmethod
    def acquire(cls, run_dir: Path, *, command: str = "", stale_after_s: float = STALE_S,
                heartbeat_s: float = HEARTBEAT_S, note: Callable[[str], None] = _stderr) -> RunLock:
        """Take the lock of the existing folder ``run_dir``, taking over a stale one (``note`` gets a
        line saying so); RunInUse naming the live holder otherwise."""
        run_dir = Path(run_dir)
        me = this_process(command)
        lock = cls(run_dir, me, heartbeat_s=heartbeat_s, note=note)
        for _ in range(_TRIES):
            try:
                made = _create(lock.path, lock.text)
            except OSError as err:
                raise UserError(f"{lock.path}: cannot create the run's lock ({err.strerror or err})") from None
            if made:
                lock._beat.start()
                return lock
            seen = _seen(lock.path)
            if seen is None:
                continue  # released in between
            holder = Holder.from_json(seen[0])
            reason = stale_reason(holder, seen[1], me, stale_after_s=stale_after_s)
            if reason is None:
                raise _refusal(run_dir, holder, seen[1])
            if _remove_if(lock.path, seen[0]):
                who = holder.describe() if holder is not None else "unreadable"
                note(f"note: {run_dir}: took over the lock of a search that is no longer running ({who}): {reason}")
        raise RunInUse(f"{run_dir}: could not take the run's lock after {_TRIES} tries (other drivers keep taking "
                       "it); one driver per run")

    def _heartbeat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if _read_text(self.path) != self.text:
                self.lost = True
                self.note(f"warning: {self.path}: this search no longer holds the run's lock (removed or taken "
                          "over by another driver); stop one of them")
                return
            with contextlib.suppress(OSError):  # a full or failing disk: the search reports that itself
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this process's."""
        if os.getpid() != self.holder.pid:
            return  # a forked child never releases its parent's lock
        self._stop.set()
        if self._beat.is_alive() and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        with contextlib.suppress(OSError):  # nothing more can be done; a later driver sees it is stale
            _remove_if(self.path, self.text)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
