"""Running the search: the engine (``runner.engine``: driver, trial, executors; ``runner.data``) and
the applications over it (search, export, predict, the ``cellsparse`` command)."""
