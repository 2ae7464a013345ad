"""The run directory: the one contract between the search, the report and export, read and written here.

Layout (``runs/<name>/``)::

    space.yaml      the resolved space that ran (``SearchSpace.to_yaml()``)
    run.json        when, where and with what it ran (machine, versions, command, sessions)
    study.journal   Optuna JournalStorage: the source of truth for trials
    trials.csv      one row per trial, rewritten from the journal as trials finish (``trials_columns``)
    trials/<n>/     config.json, metrics.json, history.json, model.pt, meta.json, looked_at.npz
    report.html     the report (built at the end)
    deploy_calibration.json  the throughput objective's reference rates, measured once per run (when
                    throughput is an objective or a constraint; ``runner.engine.deploy``)
    ray/            Ray Tune's own experiment files (ray backend only)
    driver.lock     held by the search driver while it runs: one driver per run (``cellsparse.runlock``)

``trials.csv`` is regenerated from the journal alone: everything beyond Optuna's own fields (the full
config, test accuracy, final k, ...) is stored on each trial as a user attribute. The reader
(``read_run``, ``read_trials``) needs only space.yaml and trials.csv; anything else missing becomes a
note, so a report can be built mid-run or from a partly copied run. Torch-free: the report reads
runs without loading a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.storages.journal import JournalFileBackend

from cellsparse.errors import UserError
from cellsparse.files import write_atomic
from cellsparse.objective_info import objective_extras
from cellsparse.pareto import pareto_mask
from cellsparse.run_space import RunSpace, read_run_space
from cellsparse.runlock import LOCK_FILE
from cellsparse.strategy_info import INPUT_SIZE_KEY, is_sparse


class ResolvedSpace(Protocol):
    """What the writer reads of a resolved space (a ``search_space.spec.SearchSpace``)."""

    name: str
    seed: int
    path: Path
    search: Any  # its backend and sampler go into run.json

    def with_absolute_data_path(self) -> ResolvedSpace: ...

    def to_yaml(self) -> str: ...


SPACE_FILE = "space.yaml"
RUN_FILE = "run.json"
JOURNAL_FILE = "study.journal"
DATA_FINGERPRINT = "data_fingerprint"  # run.json key: runner.data.data_fingerprint of the data the run started with
SPACE_DIGEST = "space_sha256"  # run.json key: space_digest of the space.yaml the run started with
TRIALS_FILE = "trials.csv"
TRIALS_DIR = "trials"
REPORT_FILE = "report.html"
CALIBRATION_FILE = "deploy_calibration.json"
RAY_DIR = "ray"
#: What ``trials/<n>/`` holds; metrics.json is written last, so its presence marks a finished trial.
CONFIG_FILE, METRICS_FILE, HISTORY_FILE = "config.json", "metrics.json", "history.json"
META_FILE, WEIGHTS_FILE, LOOKED_AT_FILE, ERROR_FILE = "meta.json", "model.pt", "looked_at.npz", "error.txt"

#: Settings that may change between sessions of one run (``--resume`` with other flags).
SESSION_SETTINGS = ("trials", "backend", "max_concurrent", "resources", "timeout_s")

#: Per-trial figures kept as Optuna user attributes (so trials.csv can be rebuilt from the journal).
ATTR_CONFIG = "config"
ATTR_STRATEGY = "strategy"
ATTR_TEST_ACCURACY = "test_accuracy"
ATTR_K_FINAL = "k_final"
ATTR_PARAMS = "params_count"
ATTR_DURATION = "duration_s"
ATTR_ERROR = "error"
ATTR_CONSTRAINTS = "constraints"  # {max_<objective>: value}, <= 0 feasible (also set as Optuna constraints)
ATTR_STOPPED_AT = "stopped_at_epoch"  # PRUNED trials: the rung epoch early stopping cut them at
ATTR_LAST = "last_"  # PRUNED trials: prefix of their objective values at that epoch
ATTR_NODE = "node"  # the Ray node a trial ran on: "<ip> (<node id prefix>)" (ray backend only)
ATTR_RUNG = "rung_"  # objective values a trial reached at rung epoch e, as attribute rung_<e> (for --resume)

#: What a FAIL trial without a recorded error is: its driver stopped (Ctrl-C, kill) mid-trial.
INTERRUPTED = "interrupted: the search stopped before this trial finished"
NODE_LOST = "node lost"  # how the error of a trial whose Ray node left the cluster begins


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def write_traceback(run_dir: Path, number: int, text: str) -> None:
    """A failed trial's traceback, as ``trials/<n>/error.txt`` (its one-line error is in the journal)."""
    directory = trial_dir(run_dir, number)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / ERROR_FILE, text)


def trial_dir(run_dir: Path, number: int) -> Path:
    return Path(run_dir) / TRIALS_DIR / str(int(number))


def open_storage(run_dir: Path) -> optuna.storages.JournalStorage:
    """The run's journal storage (created on first use)."""
    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(run_dir) / JOURNAL_FILE)))


def check_journal(run_dir: Path) -> int | None:
    """Read the run's journal line by line: UserError (file and line number) for a damaged record.

    Returns the size to cut the file back to when only its last line is torn (no newline: a kill in
    the middle of a write), else None. Optuna skips such a fragment when reading, but the next
    append would be glued onto it and make that record, and every read after it, fail.
    """
    path = Path(run_dir) / JOURNAL_FILE
    if not path.is_file():
        return None
    offset = 0
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    return offset  # the last line, torn
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    raise UserError(f"{path}: line {number} is not a journal record (damaged file); the trials "
                                    f"after it cannot be read; restore the file from a copy or start a new run")
                offset += len(line)
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    return None


def repair_journal(run_dir: Path) -> str | None:
    """Cut a torn last line off the journal (see ``check_journal``); return a warning, or None."""
    path = Path(run_dir) / JOURNAL_FILE
    keep = check_journal(run_dir)
    if keep is None:
        return None
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        os.fsync(handle.fileno())
    return (f"warning: {path}: its last line was cut short (the search was killed while writing it); "
            f"dropped those {size - keep} bytes (bytes {keep}-{size - 1}), the records before them are intact")


def has_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run (a resolved space and a journal)."""
    run_dir = Path(run_dir)
    return (run_dir / SPACE_FILE).is_file() and (run_dir / JOURNAL_FILE).is_file()


def _comparable(space_yaml: str) -> dict[str, Any]:
    """The parts of a resolved space that define a run (session settings left out)."""
    data = yaml.safe_load(space_yaml) or {}
    search = dict(data.get("search") or {})
    for key in SESSION_SETTINGS:
        search.pop(key, None)
    data["search"] = search
    return data


def check_out_dir(run_dir: Path, space: ResolvedSpace, *, resume: bool) -> None:
    """Refuse to start where it would mix two runs; raise UserError naming the directory and the fix.

    A new run needs an empty or absent directory. ``resume`` needs a run there whose space matches
    ``space`` up to the session settings (trials, backend, concurrency, resources, timeout).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: exists and is not a directory")
    if not run_dir.exists():
        base = next((p for p in run_dir.absolute().parents if p.exists()), None)
        if base is not None and not base.is_dir():
            raise UserError(f"--out {run_dir}: {base} is a file, not a directory")
        if base is not None and not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"--out {run_dir}: cannot create it, {base} is not writable")
    existing = run_dir / SPACE_FILE
    if not resume:
        if has_run(run_dir) or existing.is_file():
            stored = existing.read_text(encoding="utf-8") if existing.is_file() else ""
            same = stored and _comparable(stored) == _comparable(space.with_absolute_data_path().to_yaml())
            what = "this run" if same else f"a different run (its {SPACE_FILE} differs from {space.path})"
            raise UserError(
                f"{run_dir} already holds {what}; pass --resume to continue it, or --out to start a new one"
            )
        if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):  # a stale lock is taken over
            raise UserError(f"{run_dir} is not empty and holds no run; pass --out with a new or empty directory")
        return
    if not has_run(run_dir):
        raise UserError(f"--resume: {run_dir} holds no run to resume (no {SPACE_FILE} and {JOURNAL_FILE} there)")
    stored = existing.read_text(encoding="utf-8")
    if _comparable(stored) != _comparable(space.with_absolute_data_path().to_yaml()):
        raise UserError(
            f"--resume: {run_dir} holds a run of a different space ({existing} differs from {space.path}); "
            "resume without --space (the run keeps its own space.yaml), or use --out for a new run"
        )


def write_space(run_dir: Path, space: ResolvedSpace) -> None:
    write_atomic(Path(run_dir) / SPACE_FILE, space.with_absolute_data_path().to_yaml())


def space_digest(space_yaml: str) -> str:
    """A sha256 of what defines the run in a resolved space's YAML (session settings left out)."""
    canonical = json.dumps(_comparable(space_yaml), sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_space_unchanged(run_dir: Path) -> None:
    """UserError when the run's space.yaml no longer describes the run it started (edited since: the
    journal's trials were sampled from the space recorded in run.json); runs from before the digest
    was recorded are not checked. Reads only."""
    recorded = read_run_json(run_dir).get(SPACE_DIGEST)
    path = Path(run_dir) / SPACE_FILE
    if not recorded or not path.is_file():
        return
    try:
        now = space_digest(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, TypeError):
        now = None
    if now != recorded:
        raise UserError(f"--resume: {path} was edited after the run started (it no longer matches the {SPACE_DIGEST} "
                        f"in {RUN_FILE}; only the session settings {', '.join(SESSION_SETTINGS)} may change, and "
                        "those through flags); put the file back as it was, or start a new run with --out")


def read_run_json(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def start_session(run_dir: Path, space: ResolvedSpace, *, command: Sequence[str], address: str | None,
                  data_fingerprint: str | None = None, environment: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write run.json for a new session (a first run or a resume); return its content.

    ``data_fingerprint`` is kept from the first session that gives one (``runner.search`` refuses
    to resume on data with another). ``environment`` (``machine`` and ``versions``, from
    ``runner.machine``) replaces the previous session's.

    ``started_at`` stays the first session's; ``sessions`` lists every session; ``wall_time_s`` sums them.
    """
    info = read_run_json(run_dir)
    started = now_iso()
    session = {
        "started_at": started,
        "finished_at": None,
        "wall_time_s": None,
        "backend": space.search.backend,
        "address": address,
        "command": " ".join(command),
    }
    info.update(
        {
            "name": space.name,
            "started_at": info.get("started_at") or started,
            "finished_at": None,
            "wall_time_s": info.get("wall_time_s") or 0.0,
            "backend": space.search.backend,
            "sampler": space.search.sampler,
            "seed": space.seed,
            **dict(environment or {}),
            "command": " ".join(command),
            DATA_FINGERPRINT: info.get(DATA_FINGERPRINT) or data_fingerprint,
            SPACE_DIGEST: space_digest(space.with_absolute_data_path().to_yaml()),
        }
    )
    earlier = [_close_killed(run_dir, s) for s in info.get("sessions", [])]
    info["sessions"] = [*earlier, session]
    info["wall_time_s"] = round(sum(s.get("wall_time_s") or 0.0 for s in earlier), 3)
    write_atomic(Path(run_dir) / RUN_FILE, json.dumps(info, indent=2) + "\n")
    return info


def _close_killed(run_dir: Path, session: dict[str, Any]) -> dict[str, Any]:
    """A session that never recorded its end (killed): its wall time runs to the run's last write
    (the journal's or trials.csv's modification time), marked as such."""
    if session.get("finished_at") or session.get("wall_time_s") is not None or not session.get("started_at"):
        return session
    try:
        started = datetime.fromisoformat(session["started_at"]).timestamp()
    except (TypeError, ValueError):
        return session
    writes = [p.stat().st_mtime for p in (Path(run_dir) / JOURNAL_FILE, Path(run_dir) / TRIALS_FILE) if p.is_file()]
    last = max(writes, default=started)
    return {**session, "finished_at": datetime.fromtimestamp(last, timezone.utc).astimezone().isoformat(timespec="seconds"),
            "wall_time_s": round(max(0.0, last - started), 3), "ended": "killed (wall time up to its last write)"}


def finish_session(run_dir: Path, *, wall_time_s: float, finished: bool) -> None:
    """Record the end of the current session; ``finished_at`` is set only when the run is complete."""
    info = read_run_json(run_dir)
    ended = now_iso()
    sessions = info.get("sessions") or [{}]
    sessions[-1].update({"finished_at": ended, "wall_time_s": round(wall_time_s, 3)})
    info["sessions"] = sessions
    info["wall_time_s"] = round(sum(s.get("wall_time_s") or 0.0 for s in sessions), 3)
    info["finished_at"] = ended if finished else None
    write_atomic(Path(run_dir) / RUN_FILE, json.dumps(info, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Trials table: its columns and their types, the writer (from the journal) and the one parser

#: The trials table's columns before the objectives and after them, each with the type ``read_trials``
#: gives it (numbers it cannot read become NaN; text stays as read, an empty cell NaN). The objective
#: columns (float), each followed by the extras its objective reports (``throughput_spread``, float),
#: sit between the two; ``config.<key>`` columns close the table, read as pandas infers.
HEAD_COLUMNS: dict[str, type] = {"number": int, "state": str, "feasible": bool, "strategy": str, "sparse": bool}
TAIL_COLUMNS: dict[str, type] = {"test_accuracy": float, "k_final": float, "params_count": int, "duration_s": float,
                                 ATTR_NODE: str, "datetime_start": str, "datetime_complete": str, "error": str,
                                 ATTR_STOPPED_AT: int}
CONFIG_PREFIX = "config."
#: The side in pixels each trial's model sees (its config's input_size, or the data's image_size).
INPUT_COLUMN = f"{CONFIG_PREFIX}{INPUT_SIZE_KEY}"
STATES = ("COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING")


def trials_columns(objective_names: Sequence[str]) -> list[str]:
    """The trials table's columns up to the config ones."""
    return [*HEAD_COLUMNS, *objective_names, *objective_extras(objective_names), *TAIL_COLUMNS]


def is_interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """A FAIL trial with no recorded error: its search stopped mid-trial. It does not count as run."""
    return trial.state == optuna.trial.TrialState.FAIL and ATTR_ERROR not in trial.user_attrs


def is_lost_with_node(trial: optuna.trial.FrozenTrial) -> bool:
    """A FAIL trial whose cluster node left mid-trial: the config is not at fault, so it does not count."""
    return trial.state == optuna.trial.TrialState.FAIL and str(trial.user_attrs.get(ATTR_ERROR, "")).startswith(NODE_LOST)


def counts_as_run(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials that use up the trial budget: COMPLETE, PRUNED and genuinely FAILED ones
    (not those interrupted by a stopped search or lost with a cluster node)."""
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return trial.state in finished and not is_interrupted(trial) and not is_lost_with_node(trial)


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def trials_frame(study: optuna.Study, objective_names: Sequence[str]) -> pd.DataFrame:
    """One row per trial, from the journal alone: ``trials_columns``, then ``config.<key>`` columns."""
    rows = []
    config_keys: list[str] = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        config = attrs.get(ATTR_CONFIG) or {}
        for key in config:
            if key not in config_keys:
                config_keys.append(key)
        values = trial.values if trial.state == optuna.trial.TrialState.COMPLETE and trial.values else None
        if trial.state == optuna.trial.TrialState.PRUNED:  # stopped early: the figures it stopped at
            values = [attrs.get(ATTR_LAST + name) for name in objective_names]
        error = attrs.get(ATTR_ERROR)
        if is_interrupted(trial):
            error = INTERRUPTED
        row: dict[str, Any] = {
            "number": trial.number,
            "state": trial.state.name,
            "feasible": is_feasible(trial),
            "strategy": attrs.get(ATTR_STRATEGY, config.get("strategy")),
            "sparse": is_sparse(attrs.get(ATTR_STRATEGY, config.get("strategy"))),
        }
        for i, name in enumerate(objective_names):
            row[name] = _cell(values[i]) if values else None
        for extra in objective_extras(objective_names):
            row[extra] = _cell(attrs.get(extra))
        row[ATTR_STOPPED_AT] = attrs.get(ATTR_STOPPED_AT)
        row.update(
            {
                "test_accuracy": attrs.get(ATTR_TEST_ACCURACY),
                "k_final": attrs.get(ATTR_K_FINAL),
                "params_count": attrs.get(ATTR_PARAMS),
                "duration_s": attrs.get(ATTR_DURATION, trial.duration.total_seconds() if trial.duration else None),
                ATTR_NODE: attrs.get(ATTR_NODE),
                "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
                "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
                "error": error,
            }
        )
        for key, value in config.items():
            row[f"{CONFIG_PREFIX}{key}"] = _cell(value)
        rows.append(row)
    base = trials_columns(objective_names)
    columns = base + [f"{CONFIG_PREFIX}{k}" for k in config_keys]
    frame = pd.DataFrame(rows, columns=columns)
    for column in columns:
        kind = TAIL_COLUMNS.get(column) or (_config_kind(rows, column) if column.startswith(CONFIG_PREFIX) else None)
        if kind is int:  # whole numbers stay whole (written 16, not 16.0), missing ones empty
            frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
    return frame


def _config_kind(rows: list[dict[str, Any]], column: str) -> type | None:
    """int when every value the trials hold for a config key is an integer (bools are not), else None."""
    present = [row[column] for row in rows if row.get(column) is not None]
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return int
    return None


def write_trials_csv(run_dir: Path, study: optuna.Study, objective_names: Sequence[str]) -> pd.DataFrame:
    """Rewrite trials.csv from the study (atomically); return the table."""
    frame = trials_frame(study, objective_names)
    write_atomic(Path(run_dir) / TRIALS_FILE, frame.to_csv(index=False))
    return frame


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


def read_trials(path: Path, objectives: Sequence[str] = ()) -> pd.DataFrame:
    """trials.csv with its columns typed as ``HEAD_COLUMNS``, ``objectives`` and ``TAIL_COLUMNS`` say.

    The one parser of the trials table. The state is upper-case, the strategy never empty. An empty
    ``feasible`` cell is feasible (the writer records a constraint only where one was set); a table
    without ``sparse`` (written before it was) gets it from ``cellsparse.strategy_info``.
    """
    try:
        trials = pd.read_csv(path, keep_default_na=True, dtype=str)  # every column typed below, from its text
    except pd.errors.EmptyDataError:
        trials = pd.DataFrame(columns=["number", "state"])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: cannot read the trials table ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in ("number", "state") if c not in trials.columns]
    if missing:
        raise UserError(f"{path}: the trials table has no column(s) {missing}; is this a cellsparse run?")
    trials["number"] = pd.to_numeric(trials["number"], errors="coerce")
    trials = trials[trials["number"].notna()].copy()
    trials["number"] = trials["number"].astype(int)
    trials["state"] = trials["state"].fillna("").astype(str).str.upper()
    if "strategy" not in trials.columns:
        trials["strategy"] = trials.get(f"{CONFIG_PREFIX}strategy", "unknown")
    trials["strategy"] = trials["strategy"].fillna("unknown").astype(str)
    trials["feasible"] = parse_bool(trials["feasible"], missing=True) if "feasible" in trials else True
    if "sparse" in trials:
        trials["sparse"] = parse_bool(trials["sparse"], missing=True)
    else:
        trials["sparse"] = trials["strategy"].map(lambda name: bool(is_sparse(name)))
    numbers = [*objectives, *objective_extras(objectives), *(c for c, kind in TAIL_COLUMNS.items() if kind is float)]
    for column in (c for c in numbers if c in trials.columns):
        trials[column] = pd.to_numeric(trials[column], errors="coerce")
    for column in (c for c, kind in TAIL_COLUMNS.items() if kind is int and c in trials.columns):
        trials[column] = pd.to_numeric(trials[column], errors="coerce").round().astype("Int64")
    for column in config_columns(trials):
        trials[column] = typed_config_column(trials[column])
    return trials.sort_values("number", kind="stable").reset_index(drop=True)


_INTEGER_TEXT = r"[+-]?\d+"
_BOOL_TEXT = {"true": True, "false": False}


def typed_config_column(column: pd.Series) -> pd.Series:
    """A ``config.*`` column read as text, typed by what it holds: integers (written without a point)
    as nullable Int64, other numbers as float64, true/false as nullable boolean, anything else (names,
    JSON lists) as text. An empty cell is a key the trial's strategy does not take."""
    present = column.dropna().astype(str).str.strip()
    if present.empty:
        return pd.to_numeric(column, errors="coerce")
    if present.str.fullmatch(_INTEGER_TEXT).all():
        return pd.to_numeric(column, errors="coerce").astype("Int64")
    numeric = pd.to_numeric(present, errors="coerce")
    if numeric.notna().all():
        return pd.to_numeric(column, errors="coerce")
    if present.str.lower().isin(_BOOL_TEXT).all():
        return column.map(lambda v: pd.NA if pd.isna(v) else _BOOL_TEXT[str(v).strip().lower()]).astype("boolean")
    return column


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The ``config.*`` columns, in table order, without the duplicated strategy."""
    return [c for c in trials.columns if c.startswith(CONFIG_PREFIX) and c != f"{CONFIG_PREFIX}strategy"]


# ---------------------------------------------------------------------------------------------
# Reading a run directory


@dataclass
class RunRecord:
    """One run directory as read, torch-free: its typed space, run.json, trials table and notes on what
    was missing. What the report and export's trial picking read; ``runner.run.Run`` (the user's
    object, ``cellsparse.Run``) wraps one."""

    path: Path
    space: RunSpace
    info: dict[str, Any]
    trials: pd.DataFrame
    directions: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.space.name or self.info.get("name") or self.path.name)

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
        return trial_dir(self.path, number)


def _fill_input_size(trials: pd.DataFrame, space: RunSpace) -> pd.DataFrame:
    """Where the run searched input_size, a trial that left it out (or null) sees the data's image_size:
    the column says so, so tables, hover texts and axes show every trial's resolution as a number."""
    if INPUT_COLUMN not in trials.columns:
        return trials
    sizes = pd.to_numeric(trials[INPUT_COLUMN], errors="coerce")
    if space.image_size is not None:
        sizes = sizes.fillna(space.image_size)
    trials[INPUT_COLUMN] = sizes
    return trials


def read_run(run_dir: Path) -> RunRecord:
    """Read a run directory; UserError naming the path when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        why = "it is a file" if run_dir.is_file() else "no such folder"
        raise UserError(f"{run_dir}: not a run directory ({why}); pass runs/<name>")
    space_path, trials_path = run_dir / SPACE_FILE, run_dir / TRIALS_FILE
    for required in (space_path, trials_path):
        if not required.is_file():
            raise UserError(f"{run_dir}: not a run directory ({required.name} is missing at {required})")
    space = read_run_space(space_path)
    notes: list[str] = []
    info: dict[str, Any] = {}
    info_path = run_dir / RUN_FILE
    if info_path.is_file():
        try:
            loaded = json.loads(info_path.read_text(encoding="utf-8"))
            info = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            notes.append(f"run.json could not be read ({type(exc).__name__}); run details are missing")
    else:
        notes.append("run.json is missing; run details (wall time, machine, versions) are not shown")
    directions = dict(space.objectives)
    trials = _fill_input_size(read_trials(trials_path, list(directions)), space)
    absent = [o for o in directions if o not in trials.columns]
    if absent:
        notes.append(f"trials.csv has no column for objective(s) {', '.join(absent)}; no trial counts as done")
        for name in absent:
            trials[name] = np.nan
    return RunRecord(path=run_dir, space=space, info=info, trials=trials, directions=directions, notes=notes)


def load_json(path: Path) -> Any:
    """A trial's JSON file, or None when it is absent or unreadable (the report notes the gap)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def python_command() -> list[str]:
    """How this process was started, for run.json (``python -m runner.search ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("runner", "search.py")):
        argv = ["python", "-m", "runner.search", *argv[1:]]
    return argv
