"""What the user sees: Pareto/hypervolume maths and the HTML report.

Public API:

- ``python -m reports.build runs/<name> [--out FILE]`` and ``reports.build.build_report(run_dir, out=None)``:
  the self-contained HTML report of a run directory.
- ``reports.pareto``: ``pareto_mask``, ``hypervolume``, ``hypervolume_history``, ``knee_point``,
  ``most_accurate``, ``most_accurate_within_budget``, ``pick_trial`` and ``reference_point_from_space``,
  shared with ``runner.export`` so that the report and the export agree on the front.

Runs are read through ``cellsparse.rundir``. Importing ``reports.pareto`` pulls in numpy, pandas and Optuna
(never torch, Ray or plotly); building a report never imports torch or Ray.
"""
