"""The executor registry with the built-in executors loaded: what the search imports."""

from runner.engine import in_process, ray_executor  # noqa: F401 (importing them registers the built-ins)
from runner.engine.executor import Executor, executor_names, make_executor, register_executor

__all__ = ["Executor", "executor_names", "make_executor", "register_executor"]
