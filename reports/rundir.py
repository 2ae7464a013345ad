"""Read a run directory (space.yaml, run.json, trials.csv, trials/<n>/...) into plain data.

The run directory is the report's only input. Required: space.yaml and trials.csv; everything else
is optional and its absence becomes a note in the report rather than an error, so a report can be
built mid-run or from a partly copied run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cellsparse.pareto import pareto_mask
from search_space.resolution import INPUT_SIZE_KEY

from ._errors import user_error

#: The side in pixels each trial's model sees (its config's input_size, or the data's image_size).
INPUT_COLUMN = f"config.{INPUT_SIZE_KEY}"
STATES = ("COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING")


@dataclass
class Run:
    """One run directory, loaded."""

    path: Path
    space: dict[str, Any]
    info: dict[str, Any]
    trials: pd.DataFrame
    directions: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.space.get("name") or self.info.get("name") or self.path.name)

    @property
    def objectives(self) -> list[str]:
        return list(self.directions)

    def eligible(self) -> pd.Series:
        """COMPLETE, feasible trials with finite objectives (what fronts and picks use)."""
        return eligible_mask(self.trials, self.objectives)

    def pareto(self) -> pd.Series:
        """Mask of the trials on the run's Pareto front (over all objectives, eligible trials only)."""
        ok = self.eligible().to_numpy()
        mask = np.zeros(len(self.trials), dtype=bool)
        if ok.any() and self.objectives:
            values = np.column_stack([pd.to_numeric(self.trials[o], errors="coerce") for o in self.objectives])
            mask[np.flatnonzero(ok)] = pareto_mask(values[ok], [self.directions[o] for o in self.objectives])
        return pd.Series(mask, index=self.trials.index)

    def trial_dir(self, number: int) -> Path:
        return self.path / "trials" / str(int(number))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise user_error(f"{path}: not valid YAML ({where}{problem})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise user_error(f"{path}: cannot read the run's space file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise user_error(f"{path}: expected a YAML mapping (the resolved search space), got {type(data).__name__}")
    return data


def parse_bool(column: pd.Series, *, missing: bool) -> pd.Series:
    """A trials.csv boolean column (True/False, "true"/"false", 1/0) as bools; an empty cell is ``missing``."""
    if column.dtype == bool:
        return column
    text = column.astype(str).str.strip().str.lower()
    known = text.isin(["true", "1", "1.0", "yes", "false", "0", "0.0", "no"])
    return text.isin(["true", "1", "1.0", "yes"]).where(known, missing).astype(bool)


def eligible_mask(trials: pd.DataFrame, objectives: Sequence[str]) -> pd.Series:
    """COMPLETE, feasible trials with every objective finite: the only ones a front counts."""
    ok = trials["state"].astype(str).str.upper().eq("COMPLETE")
    if "feasible" in trials.columns:
        ok &= parse_bool(trials["feasible"], missing=True)
    for name in objectives:
        if name not in trials.columns:
            return pd.Series(False, index=trials.index)
        ok &= np.isfinite(pd.to_numeric(trials[name], errors="coerce"))
    return ok


def _sparse_of(strategies: pd.Series) -> pd.Series:
    """Sparse or dense for runs written before trials.csv said so: asked of the strategy registry."""
    from search_space.strategies import is_sparse  # the registry (and torch): only for such older runs

    return strategies.map(lambda name: bool(is_sparse(name)))


def read_trials(path: Path) -> pd.DataFrame:
    """trials.csv as typed columns: number int, state upper-case, strategy str, feasible and sparse bool.

    The one parser of the trials table. An empty ``feasible`` cell is feasible (the writer records a
    constraint only where one was set); a table without ``sparse`` gets it from the strategy registry.
    """
    try:
        trials = pd.read_csv(path, keep_default_na=True)
    except pd.errors.EmptyDataError:
        trials = pd.DataFrame(columns=["number", "state"])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise user_error(f"{path}: cannot read the trials table ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in ("number", "state") if c not in trials.columns]
    if missing:
        raise user_error(f"{path}: the trials table has no column(s) {missing}; is this a cellsparse run?")
    trials["number"] = pd.to_numeric(trials["number"], errors="coerce")
    trials = trials[trials["number"].notna()].copy()
    trials["number"] = trials["number"].astype(int)
    trials["state"] = trials["state"].fillna("").astype(str).str.upper()
    if "strategy" not in trials.columns:
        trials["strategy"] = trials.get("config.strategy", "unknown")
    trials["strategy"] = trials["strategy"].fillna("unknown").astype(str)
    trials["feasible"] = parse_bool(trials["feasible"], missing=True) if "feasible" in trials else True
    trials["sparse"] = parse_bool(trials["sparse"], missing=True) if "sparse" in trials else _sparse_of(trials["strategy"])
    return trials.sort_values("number", kind="stable").reset_index(drop=True)


def _fill_input_size(trials: pd.DataFrame, space: dict[str, Any]) -> pd.DataFrame:
    """Where the run searched input_size, a trial that left it out (or null) sees the data's image_size:
    the column says so, so tables, hover texts and axes show every trial's resolution as a number."""
    if INPUT_COLUMN not in trials.columns:
        return trials
    sizes = pd.to_numeric(trials[INPUT_COLUMN], errors="coerce")
    data = space.get("data")
    frame = data.get("image_size") if isinstance(data, dict) else None
    if isinstance(frame, (int, float)) and not isinstance(frame, bool):
        sizes = sizes.fillna(float(frame))
    trials[INPUT_COLUMN] = sizes
    return trials


def load_run(run_dir: Path) -> Run:
    """Load a run directory; UserError naming the path when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise user_error(f"{run_dir}: not a run directory (no such folder); pass runs/<name>")
    space_path, trials_path = run_dir / "space.yaml", run_dir / "trials.csv"
    for required in (space_path, trials_path):
        if not required.is_file():
            raise user_error(f"{run_dir}: not a run directory ({required.name} is missing at {required})")
    space = _read_yaml(space_path)
    notes: list[str] = []
    info: dict[str, Any] = {}
    info_path = run_dir / "run.json"
    if info_path.is_file():
        try:
            loaded = json.loads(info_path.read_text(encoding="utf-8"))
            info = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            notes.append(f"run.json could not be read ({type(exc).__name__}); run details are missing")
    else:
        notes.append("run.json is missing; run details (wall time, machine, versions) are not shown")
    objectives = space.get("objectives") or {}
    if not isinstance(objectives, dict) or not objectives:
        raise user_error(f"{space_path}: 'objectives' must map objective names to maximize/minimize")
    bad = {k: v for k, v in objectives.items() if v not in ("maximize", "minimize")}
    if bad:
        raise user_error(f"{space_path}: objective directions must be 'maximize' or 'minimize', but got {bad}")
    trials = _fill_input_size(read_trials(trials_path), space)
    directions = {str(k): str(v) for k, v in objectives.items()}
    absent = [o for o in directions if o not in trials.columns]
    if absent:
        notes.append(f"trials.csv has no column for objective(s) {', '.join(absent)}; no trial counts as done")
        for name in absent:
            trials[name] = np.nan
    return Run(path=run_dir, space=space, info=info, trials=trials, directions=directions, notes=notes)


def load_json(path: Path) -> Any:
    """A trial's JSON file, or None when it is absent or unreadable (the report notes the gap)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The ``config.*`` columns, in table order, without the duplicated strategy."""
    return [c for c in trials.columns if c.startswith("config.") and c != "config.strategy"]
