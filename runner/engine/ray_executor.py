"""The Ray Tune executor (``backend: ray``, the default): trials in Ray worker processes, locally or
on a cluster. Ray is heavy, so this class only names the work; ``runner.engine.ray_tune`` (the one
module that imports Ray) does it, and is imported when a Ray session starts."""

from __future__ import annotations

from collections.abc import Callable

from runner.engine.driver import SearchDriver
from runner.engine.executor import Executor, register_executor


@register_executor("ray")
class RayExecutor(Executor):
    """Ray Tune workers; joins ``address`` (a running cluster) or starts a local Ray instance."""

    replaces_lost_trials = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._started = False

    def uses_own_early_stopping(self) -> bool:
        """``early_stopping: asha`` is Tune's own ASHAScheduler (the single-metric baseline)."""
        return self.space.search.early_stopping.name == "asha"

    def check(self) -> None:
        if self.address:
            from runner.engine import ray_tune  # ray is heavy: only a Ray session loads it

            ray_tune.check_address(self.address)  # seconds, before the data are loaded

    def prepare(self, say: Callable[[str], None]) -> None:
        from runner.engine import ray_tune  # ray is heavy: only a Ray session loads it

        self._started = ray_tune.connect(self.address)
        try:
            ray_tune.check_resources(self.space)
        except BaseException:
            self.close()
            raise

    def run(self, driver: SearchDriver, *, n_trials: int, session: str) -> None:
        from runner.engine import ray_tune  # ray is heavy: only a Ray session loads it

        ray_tune.run_ray(driver, n_trials=n_trials, session=session, ray_asha=self.uses_own_early_stopping())

    def close(self) -> None:
        if self._started:
            from runner.engine import ray_tune  # ray is heavy: only a Ray session loads it

            ray_tune.disconnect()
            self._started = False
