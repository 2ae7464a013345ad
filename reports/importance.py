"""Parameter importance per objective with optuna.importance (Optuna's default evaluator).

The study comes from the run's journal (the source of truth) when it loads and matches the
objectives; otherwise it is rebuilt from trials.csv (config columns as parameters, ranges inferred
from the values seen), so a copied run without its journal still gets the panel.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution

from cellsparse.rundir import JOURNAL_FILE, RunRecord, config_columns, open_storage

MIN_TRIALS = 2


def _journal_study(run: RunRecord) -> optuna.Study | None:
    path = run.path / JOURNAL_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return None
    storage = open_storage(run.path)
    names = optuna.get_all_study_names(storage)
    if not names:
        return None
    name = run.name if run.name in names else names[0]
    study = optuna.load_study(study_name=name, storage=storage)
    if len(study.directions) != len(run.objectives):
        return None
    return study


def _table_study(run: RunRecord) -> optuna.Study:
    rows = run.trials[run.eligible().to_numpy()]
    columns = ["strategy", *config_columns(run.trials)]
    dists: dict[str, Any] = {}
    for column in columns:
        col = rows[column].dropna()
        numeric = pd.to_numeric(col, errors="coerce")
        if column != "strategy" and len(col) and numeric.notna().all() and not pd.api.types.is_bool_dtype(col):
            lo, hi = float(numeric.min()), float(numeric.max())
            dists[column] = FloatDistribution(lo, hi if hi > lo else lo + 1.0)
        elif len(col):
            dists[column] = CategoricalDistribution(sorted(col.astype(str).unique()))
    study = optuna.create_study(directions=[run.directions[o] for o in run.objectives])
    for _, row in rows.iterrows():
        params, used = {}, {}
        for column, dist in dists.items():
            value = row[column]
            if pd.isna(value):
                continue
            name = column.removeprefix("config.")
            params[name] = str(value) if isinstance(dist, CategoricalDistribution) else float(value)
            used[name] = dist
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=used, values=[float(row[o]) for o in run.objectives]))
    return study


def param_importances(run: RunRecord) -> tuple[dict[str, dict[str, float]], str]:
    """{objective: {param: importance}} and a note on where it came from or why it is missing."""
    done = run.eligible()
    if int(done.sum()) < MIN_TRIALS:
        return {}, f"parameter importance needs at least {MIN_TRIALS} complete, feasible trials"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = "the run's Optuna journal (study.journal)"
    try:
        study = _journal_study(run)
    except Exception as exc:  # a torn or foreign journal must not stop the report
        study, source = None, f"trials.csv (study.journal could not be loaded: {type(exc).__name__})"
    if study is None:
        study = _table_study(run)
        source = source if source.startswith("trials.csv") else "trials.csv (no usable study.journal)"
    # Only what the front counts: an over-budget trial is COMPLETE in the journal with accuracy 0 (never
    # trained), and would teach the evaluator "over budget" instead of what drives each objective.
    eligible = set(pd.to_numeric(run.trials.loc[done.to_numpy(), "number"]).astype(int))
    complete = [t for t in study.trials
                if t.state == optuna.trial.TrialState.COMPLETE and t.values and t.number in eligible]
    if len(complete) < len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]):
        study = optuna.create_study(directions=study.directions)
        study.add_trials(complete)
    if len(complete) < MIN_TRIALS:
        return {}, f"parameter importance needs at least {MIN_TRIALS} complete trials in the study"
    result: dict[str, dict[str, float]] = {}
    problems: list[str] = []
    for i, objective in enumerate(run.objectives):
        sign = -1.0 if run.directions[objective] == "maximize" else 1.0  # the evaluator ranks low targets

        def target(trial: Any, i: int = i, sign: float = sign) -> float:
            return sign * float(trial.values[i])

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study, target=target)
        except Exception as exc:  # e.g. no parameter varies; the report says so instead
            problems.append(f"{objective}: {type(exc).__name__}: {exc}")
            continue
        imp = {k: float(v) for k, v in imp.items() if np.isfinite(v)}
        if imp:
            result[objective] = imp
    note = f"computed with optuna.importance (default evaluator) from {source}"
    if problems:
        note += "; not available for " + "; ".join(problems)
    if not result:
        note = "parameter importance could not be computed (no parameter varies across complete trials)"
        if problems:
            note += ": " + "; ".join(problems)
    return result, note
