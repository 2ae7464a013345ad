"""Executors: how the trials of a search session are run (in this process, on Ray, ...), behind one
interface, registered by name like strategies. ``search.backend`` in a space file (``--backend``)
names one.

The search (``runner.search``) knows executors only through this interface::

    executor = make_executor(space, address=None)     # validated name -> a fresh executor; nothing started
    executor.check()                                  # seconds: what can fail before the data are loaded
    executor.prepare(say)                             # connect, check the resources a trial asks for
    executor.run(driver, n_trials=..., session=...)   # ask, execute, tell through the search driver
    executor.close()                                  # undo what prepare started (always called)

An executor never talks to Optuna itself: it asks the driver (``runner.engine.driver``) for trials,
runs ``runner.engine.execute.execute`` on each payload wherever it places trials, and tells the
driver how each ended. A plugin executor is a subclass registered with ``register_executor`` in a
module named in ``CELLSPARSE_PLUGINS``; the space file then accepts its name as ``search.backend``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from cellsparse.errors import UserError
from cellsparse.executor_info import ExecutorInfo, declare_executor, declared_executors, executor_info
from cellsparse.registry import Registry
from runner.engine.driver import SearchDriver
from search_space.spec import SearchSpace


class Executor(ABC):
    """Runs a session's trials. One instance per session; ``close`` is called however it ends."""

    #: Set by ``register_executor``: the name a space file gives, and its torch-free facts.
    name: ClassVar[str] = ""
    info: ClassVar[ExecutorInfo]
    #: Trials run in this process: the data the driver checks before the first trial are kept for them.
    in_process: ClassVar[bool] = False
    #: Trials lost with a cluster node do not count; the search runs replacements in a new session.
    replaces_lost_trials: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, *, address: str | None = None) -> None:
        if address and not self.info.cluster:
            raise UserError(f"--address joins a cluster, but the {self.name} backend runs trials on this machine; "
                            "add --backend ray")
        self.space = space
        self.address = address

    @property
    def concurrency(self) -> int:
        """Trials run at once."""
        return self.space.search.max_concurrent if self.info.concurrent else 1

    def describe(self) -> str:
        """The backend for the session's header line."""
        return self.name + (f" at {self.address}" if self.address else "")

    def uses_own_early_stopping(self) -> bool:
        """Whether this executor stops trials itself, so the driver's early-stopping rule is not used."""
        return False

    def check(self) -> None:
        """Quick checks before the data are loaded (a cluster address that does not answer); UserError."""
        return None

    def prepare(self, say: Callable[[str], None]) -> None:
        """Start what trials need and check the resources the space asks per trial; UserError when they
        are not there (after undoing what it started). ``say`` takes notes for the user."""
        return None

    @abstractmethod
    def run(self, driver: SearchDriver, *, n_trials: int, session: str) -> None:
        """Run ``n_trials`` more trials through ``driver`` (no new trial after ``search.timeout_s``);
        KeyboardInterrupt when the user stopped the session. ``session`` names it (``session-<k>``)."""

    def close(self) -> None:
        """Undo what ``prepare`` started; safe to call when it started nothing."""
        return None


_EXECUTORS: Registry[type[Executor]] = Registry("backend", unknown=UserError)


def register_executor(name: str, *, concurrent: bool | None = None, cluster: bool = False
                      ) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator: register an ``Executor`` subclass as backend ``name``.

    A built-in's facts are declared in ``cellsparse.executor_info``; a plugin declares its own here
    (``concurrent``: runs several trials at once)."""

    def add(cls: type[Executor]) -> type[Executor]:
        if not (isinstance(cls, type) and issubclass(cls, Executor)):
            raise TypeError(f"register_executor({name!r}) needs an Executor subclass, got {cls!r}")
        info = executor_info(name)
        if info is None:
            if concurrent is None:
                raise TypeError(f"register_executor({name!r}): say whether it runs trials concurrently (concurrent=)")
            info = declare_executor(name, concurrent=concurrent, cluster=cluster)
        cls.name, cls.info = name, info
        return _EXECUTORS.add(name, cls)

    return add


def executor_names() -> list[str]:
    """Every registered executor, in the order declared (the built-ins first, the default first)."""
    return [name for name in declared_executors() if name in _EXECUTORS]


def make_executor(space: SearchSpace, *, address: str | None = None) -> Executor:
    """A fresh executor for ``space.search.backend``; UserError naming the valid ones for an unknown one."""
    return _EXECUTORS.get(space.search.backend)(space, address=address)
