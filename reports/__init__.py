"""What the user sees: the HTML report, and the picks over a run's trials.

- ``python -m reports.build runs/<name> [--out FILE]`` and ``reports.build.build_report(run_dir, out=None)``
  (``cellsparse.build_report``): the self-contained HTML report of a run directory.
- ``reports.picks``: ``hypervolume_history``, ``most_accurate``, ``most_accurate_within_budget`` and
  ``pick_trial``, shared with ``runner.export`` and ``cellsparse.Run`` so that the report and the export
  pick the same trial. The maths under them (front, hypervolume, knee) is ``cellsparse.pareto``.

Runs are read through ``cellsparse.rundir``. Importing ``reports.picks`` pulls in numpy, pandas and Optuna
(never torch, Ray or plotly); building a report never imports torch or Ray.
"""
