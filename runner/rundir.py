"""The run directory: the one contract between the search, the report and export.

Layout (``runs/<name>/``)::

    space.yaml      the resolved space that ran (``SearchSpace.to_yaml()``)
    run.json        when, where and with what it ran (machine, versions, command, sessions)
    study.journal   Optuna JournalStorage: the source of truth for trials
    trials.csv      one row per trial, rewritten from the journal as trials finish
    trials/<n>/     config.json, metrics.json, history.json, model.pt, meta.json, looked_at.npz
    report.html     the report (built at the end)
    ray/            Ray Tune's own experiment files (ray backend only)

``trials.csv`` is regenerated from the journal alone: everything beyond Optuna's own fields (the full
config, test accuracy, final k, ...) is stored on each trial as a user attribute.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml

from cellsparse.files import write_atomic
from search_space.errors import UserError
from search_space.spec import SearchSpace
from search_space.strategies import is_sparse

SPACE_FILE = "space.yaml"
RUN_FILE = "run.json"
JOURNAL_FILE = "study.journal"
DATA_FINGERPRINT = "data_fingerprint"  # run.json key: runner.data.data_fingerprint of the data the run started with
TRIALS_FILE = "trials.csv"
TRIALS_DIR = "trials"
REPORT_FILE = "report.html"
RAY_DIR = "ray"

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
    (directory / "error.txt").write_text(text, encoding="utf-8")


def trial_dir(run_dir: Path, number: int) -> Path:
    return Path(run_dir) / TRIALS_DIR / str(int(number))


def open_storage(run_dir: Path) -> optuna.storages.JournalStorage:
    """The run's journal storage (created on first use)."""
    from optuna.storages.journal import JournalFileBackend

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


def _with_absolute_data_path(space: SearchSpace) -> SearchSpace:
    """``space`` with a relative ``data.path`` made absolute (from the working directory it was given
    in), so the stored space.yaml still finds the data when resume, report or export run elsewhere."""
    data = space.data
    if data.path and not os.path.isabs(data.path):
        return replace(space, data=replace(data, path=os.path.abspath(data.path)))
    return space


def _comparable(space_yaml: str) -> dict[str, Any]:
    """The parts of a resolved space that define a run (session settings left out)."""
    data = yaml.safe_load(space_yaml) or {}
    search = dict(data.get("search") or {})
    for key in SESSION_SETTINGS:
        search.pop(key, None)
    data["search"] = search
    return data


def check_out_dir(run_dir: Path, space: SearchSpace, *, resume: bool) -> None:
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
            same = stored and _comparable(stored) == _comparable(_with_absolute_data_path(space).to_yaml())
            what = "this run" if same else f"a different run (its {SPACE_FILE} differs from {space.path})"
            raise UserError(
                f"{run_dir} already holds {what}; pass --resume to continue it, or --out to start a new one"
            )
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise UserError(f"{run_dir} is not empty and holds no run; pass --out with a new or empty directory")
        return
    if not has_run(run_dir):
        raise UserError(f"--resume: {run_dir} holds no run to resume (no {SPACE_FILE} and {JOURNAL_FILE} there)")
    stored = existing.read_text(encoding="utf-8")
    if _comparable(stored) != _comparable(_with_absolute_data_path(space).to_yaml()):
        raise UserError(
            f"--resume: {run_dir} holds a run of a different space ({existing} differs from {space.path}); "
            "resume without --space (the run keeps its own space.yaml), or use --out for a new run"
        )


def write_space(run_dir: Path, space: SearchSpace) -> None:
    write_atomic(Path(run_dir) / SPACE_FILE, _with_absolute_data_path(space).to_yaml())


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "ray": version("ray"),
        "cellsparse": version("cellsparse"),
    }


def _machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": gpu}


def read_run_json(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def start_session(run_dir: Path, space: SearchSpace, *, command: Sequence[str], address: str | None,
                  data_fingerprint: str | None = None) -> dict[str, Any]:
    """Write run.json for a new session (a first run or a resume); return its content.

    ``data_fingerprint`` is kept from the first session that gives one (``runner.search`` refuses
    to resume on data with another).

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
            "machine": _machine(),
            "versions": _versions(),
            "command": " ".join(command),
            DATA_FINGERPRINT: info.get(DATA_FINGERPRINT) or data_fingerprint,
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
# Trials table


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
    """One row per trial, from the journal alone (see the module docstring for the columns)."""
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
            row[f"config.{key}"] = _cell(value)
        rows.append(row)
    base = ["number", "state", "feasible", "strategy", "sparse", *objective_names, "test_accuracy", "k_final", "params_count",
            "duration_s", ATTR_NODE, "datetime_start", "datetime_complete", "error", ATTR_STOPPED_AT]
    columns = base + [f"config.{k}" for k in config_keys]
    return pd.DataFrame(rows, columns=columns)


def write_trials_csv(run_dir: Path, study: optuna.Study, objective_names: Sequence[str]) -> pd.DataFrame:
    """Rewrite trials.csv from the study (atomically); return the table."""
    frame = trials_frame(study, objective_names)
    write_atomic(Path(run_dir) / TRIALS_FILE, frame.to_csv(index=False))
    return frame


def python_command() -> list[str]:
    """How this process was started, for run.json (``python -m runner.search ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("runner", "search.py")):
        argv = ["python", "-m", "runner.search", *argv[1:]]
    return argv
