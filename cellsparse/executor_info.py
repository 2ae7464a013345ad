"""What every layer needs to know about executors (a search's ``backend``) without loading one,
declared once: whether it runs several trials at once (``search.max_concurrent`` applies) and whether
it can join a cluster (``--address``).

Torch-free and Ray-free, so the space file's validator knows the valid ``search.backend`` names. The
executors themselves live in ``runner.engine``: ``register_executor`` takes a built-in's facts from
here and declares a plugin's in the same call, as ``cellsparse.strategy_info`` does for strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellsparse.registry import Registry


@dataclass(frozen=True)
class ExecutorInfo:
    name: str
    concurrent: bool  # runs several trials at once: search.max_concurrent applies, GPU fractions pack trials
    cluster: bool  # can join a cluster (--address)


_INFO: Registry[ExecutorInfo] = Registry("backend", added="declared")


def declare_executor(name: str, *, concurrent: bool, cluster: bool = False) -> ExecutorInfo:
    """Record an executor's facts; a name declared twice is an error."""
    return _INFO.add(name, ExecutorInfo(name, bool(concurrent), bool(cluster)))


def declared_executors() -> list[str]:
    """Every declared executor name, in declaration order."""
    return _INFO.names()


def executor_info(name: str) -> ExecutorInfo | None:
    """The facts of executor ``name``; None when no such executor is declared."""
    return _INFO.find(name)


declare_executor("ray", concurrent=True, cluster=True)
declare_executor("optuna", concurrent=False)
