"""``cellsparse search`` (``python -m runner.search``): run a multi-objective search over a space file.

    cellsparse search search_space/cells.yaml                 # or --space search_space/cells.yaml
    cellsparse search search_space/cells.yaml --trials 40 --backend optuna
    cellsparse search --out runs/cells --resume               # continue a stopped run
    cellsparse search search_space/cells.yaml --dry-run

Every trial is trained and measured; the run directory (default ``runs/<name>``) gets the resolved
space, the Optuna journal, trials.csv (rewritten as trials finish), one folder per trial and, at the
end, report.html. While trials run, progress lines give elapsed time and an ETA per trial and for the
search (``runner.engine.progress``: after every epoch on a terminal, per finished trial otherwise, none with
``--quiet``); at the end the Pareto front and the command that exports a chosen model, spelt the way
the search was started (``cellsparse ...`` or ``python -m ...``).

Stopping and resuming: Ctrl-C stops cleanly (unfinished trials are marked FAIL as interrupted, the
journal and trials.csv stay consistent); ``--resume`` continues until the requested number of
trials have run. Interrupted trials do not count and are never resumed half-way: each is replaced
by a fresh one. The same holds after the driver is killed outright.

Bad input (a flag, the space file, the output directory, a cluster address) prints one
``error: ...`` line and exits with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
import torch

from cellsparse import rundir, runlock
from cellsparse.commands import EXIT_USER_ERROR, command, command_parser, print_error, run_command
from cellsparse.errors import UserError
from cellsparse.files import storage_errno, write_error
from cellsparse.log import logger
from objectives import count_flops
from reports.build import build_report as write_report
from runner.data import data_fingerprint, load_dataset
from runner.engine.datasets import cached_dataset, data_shape, with_data_size
from runner.engine.deploy import calibrate_run
from runner.engine.driver import SearchDriver, early_stopping_rule
from runner.engine.executors import Executor, executor_names, make_executor
from runner.engine.plugins import import_plugins, plugin_modules
from runner.engine.progress import MODES, Progress, TrialFinished, format_value, print_line, resolve_mode
from runner.engine.sampler import PAYLOAD_KEY, ConfigSampler, sampler_for_session
from runner.engine.study import fail_unfinished, open_study, pareto_trials, trials_done
from runner.machine import machine, versions
from runner.run import Run
from search_space.build import build_model
from search_space.sampling import make_sampler
from search_space.spec import load_space

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class SearchRequest:
    """What one search session is asked to do: the space file and the settings that override it
    (``None`` keeps the file's). The command line and ``search()`` both build one."""

    space: Path | None = None
    out: Path | None = None
    trials: int | None = None
    backend: str | None = None
    address: str | None = None
    resume: bool = False
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    seed: int | None = None
    dry_run: bool = False
    progress: str = "auto"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SearchRequest:
        """The request the command's flags make; UserError for flags that contradict each other."""
        positional = args.space_file
        if positional is not None and args.space is not None and args.space != positional:
            raise UserError(f"two space files given: {positional} and --space {args.space}; pass one")
        if args.quiet and args.progress not in ("auto", "none"):
            raise UserError(f"--quiet and --progress {args.progress} cannot be combined")
        names = {f.name for f in dataclasses.fields(cls)} - {"space", "progress"}
        return cls(space=args.space if args.space is not None else positional,
                   progress="none" if args.quiet else args.progress, **{n: getattr(args, n) for n in names})


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "runner.search",
        "Search sparse-attention cell classifiers for the accuracy/cost trade-off "
        "(Optuna samplers, Ray Tune or in-process trials).",
        "Flags override the space file's search settings. Exit status: 0 done, 2 bad input, "
        "130 stopped (continue with --resume). Extra strategy modules: set CELLSPARSE_PLUGINS=mod1,mod2.",
    )
    parser.add_argument("space_file", nargs="?", type=Path, metavar="SPACE",
                        help="YAML space file (the same as --space FILE)")
    parser.add_argument("--space", type=Path, metavar="FILE",
                        help="YAML space file (optional with --resume: the run's own space.yaml is used)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<space name>)")
    parser.add_argument("--trials", type=int, metavar="N", help="trials in the whole run (search.trials)")
    parser.add_argument("--backend", metavar="NAME",
                        help=f"how trials run ({', '.join(executor_names())}): ray: Ray Tune workers, locally or on a "
                        "cluster; optuna: in this process, one at a time")
    parser.add_argument("--address", metavar="ADDR",
                        help="join a running Ray cluster (host:port, 'auto' or ray://host:port); ray backend only. "
                        "The run directory must then be on storage every node sees")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out (or runs/<name>) as it was started, up to its number of "
                        "trials; flags change the session settings (--trials, --backend, resources). Trials cut "
                        "short earlier are marked FAIL (interrupted) and replaced")
    parser.add_argument("--max-concurrent", type=int, metavar="N", help="trials run at once (ray backend)")
    parser.add_argument("--cpus-per-trial", type=float, metavar="C", help="CPUs per trial (also torch threads)")
    parser.add_argument("--gpus-per-trial", type=float, metavar="G", help="GPUs per trial (fractions pack trials)")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of the sampler, the data and every trial")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the space and run every check of the data the search would, then print the "
                        "first N sampled configs (at most 100) with their FLOPs; train and write nothing")
    parser.add_argument("--progress", choices=MODES, default="auto",
                        help="epochs: a line per epoch of each trial, with elapsed time and ETA; trials: a line per "
                        "finished trial; none: neither; auto (default): epochs on a terminal, trials otherwise")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines (--progress none)")
    return parser


def _check_request(args: SearchRequest) -> None:
    if args.progress not in MODES:
        raise UserError(f"progress must be one of {', '.join(MODES)}, but got {args.progress!r}")
    if args.backend is not None and args.backend not in executor_names():
        raise UserError(f"--backend {args.backend}: unknown backend; valid: {', '.join(executor_names())}")
    if args.space is None and not args.resume:
        raise UserError("--space FILE is required (or --resume with --out DIR)")
    if args.space is None and args.out is None:
        raise UserError("--resume without --space needs --out DIR (the run to continue)")
    if args.dry_run and args.resume:
        raise UserError("--dry-run and --resume cannot be combined")
    for flag in ("trials", "max_concurrent"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, but got {value}")
    if args.cpus_per_trial is not None and not (math.isfinite(args.cpus_per_trial) and args.cpus_per_trial > 0):
        raise UserError(f"--cpus-per-trial must be a finite number > 0, but got {args.cpus_per_trial}")
    if args.gpus_per_trial is not None and not (math.isfinite(args.gpus_per_trial) and args.gpus_per_trial >= 0):
        raise UserError(f"--gpus-per-trial must be a finite number >= 0, but got {args.gpus_per_trial}")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be >= 0, but got {args.seed}")


def _load(args: SearchRequest) -> tuple[Any, Path]:
    """The space to run (file + flags) and the run directory; validates everything, writes nothing."""
    given = with_data_size(load_space(args.space)) if args.space is not None else None
    out = args.out if args.out is not None else Path("runs") / given.name
    runlock.check_free(out)  # a live driver there: one line naming it, before anything else is said
    if args.resume:
        rundir.check_space_unchanged(out)  # the journal's trials were sampled from the space it started with
        if given is not None:  # the file must describe the same run; its session settings are not taken
            rundir.check_out_dir(out, given, resume=True)
        if not rundir.has_run(out):
            raise UserError(f"--resume: {out} holds no run to resume (no space.yaml and study.journal there)")
        space = load_space(out / rundir.SPACE_FILE)  # the run as it was started; flags below change it
        rundir.check_journal(out)  # a damaged record is one line now; a torn last line is cut before appending
    else:
        space = given
    space = space.with_overrides(
        trials=args.trials,
        backend=args.backend,
        seed=args.seed,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
    )
    if args.resume and args.seed is not None:
        raise UserError("--seed cannot change on --resume: the run's seed fixes its data and trials")
    if not args.resume:  # a dry run too: it must not approve a directory the search would refuse
        try:
            rundir.check_out_dir(out, space, resume=False)
        except UserError:
            runlock.check_free(out)  # a driver started at the same moment may have filled it: name that one
            raise
    data_shape(space)  # a missing or unreadable dataset is a UserError now, not in every trial
    return space, out


def _check_data(space: Any, out: Path, *, resume: bool, keep: bool) -> str | None:
    """Load the data once before the first trial, so a problem with it (NaN pixels, an empty split, a
    class missing from train, a single class, an undecodable image) is one line now instead of a
    failure in every trial; on --resume, refuse data other than the run started with. Returns the
    data's fingerprint (None for synthetic data). ``keep``: trials run in this process and reuse the
loaded data. Writes nothing."""
    kwargs = space.data.loader_kwargs()
    fingerprint = data_fingerprint(**kwargs)
    recorded = rundir.read_run_json(out).get(rundir.DATA_FINGERPRINT) if resume else None
    if recorded and fingerprint != recorded:
        raise UserError(f"--resume: the data at {space.data.path} differ from the data this run started with "
                        f"({rundir.RUN_FILE} has {recorded}, the files now give {fingerprint}); put the original data "
                        "back, or start a new run with --out")
    if keep:
        cached_dataset(space)  # trials in this process reuse it
    else:
        load_dataset(**kwargs, seed=space.seed)  # the trials' processes load their own copy
    return fingerprint


#: The most configs ``--dry-run`` prints, whatever ``--trials`` asks for.
DRY_RUN_MAX = 100


def dry_run(space: Any, n: int, say: Callable[[str], None] = print_line) -> None:
    """Print the first ``n`` configs (at most ``DRY_RUN_MAX``, and it says so) as the sampler would draw
    them, with their FLOPs; nothing is trained."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=space.directions, sampler=make_sampler(space))
    sample = ConfigSampler(space)
    in_channels, num_classes, size = data_shape(space)
    images = torch.randn(2, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    shown = min(n, DRY_RUN_MAX)
    capped = f" (of the {n:,} trials asked for; --dry-run prints at most {DRY_RUN_MAX})" if n > shown else ""
    say(f"space {space.name}: {len(space.model.strategies)} strategies, data {in_channels}x{size}x{size}, "
        f"{num_classes} classes; the first {shown} sampled configs{capped}:")
    for _ in range(shown):
        trial = study.ask()
        payload = sample(trial)[PAYLOAD_KEY]
        config = payload["config"]
        if payload["build_error"]:
            flops_text, note = "-", f"  ({payload['build_error']})"
        else:
            model = build_model(config, in_channels, num_classes, size)
            flops_text = format_value("flops", count_flops(model.eval(), images))
            beyond = [f"{name} {format_value(name, v)} beyond its limit" for name, v in payload["constraints"].items() if v > 0]
            note = "" if payload["feasible"] else f"  over budget: {', '.join(beyond)}"
        say(f"  #{trial.number:<3d} {config['strategy']:<14s} flops={flops_text:<8s}{note}")
        say(f"       {json.dumps(config, sort_keys=False)}")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def _front_table(study: Any, space: Any) -> list[str]:
    front = pareto_trials(study)
    if not front:
        return ["Pareto front: empty (no complete, feasible trial)"]
    names = space.objective_names
    header = ["trial", "strategy", *names, "k_final", "test_acc"]
    rows = []
    for t in front:
        rows.append([
            str(t.number),
            str(t.user_attrs.get(rundir.ATTR_STRATEGY, "?")),
            *[format_value(n, v) for n, v in zip(names, t.values, strict=True)],
            format_value("k", t.user_attrs.get(rundir.ATTR_K_FINAL)),
            format_value("test_accuracy", t.user_attrs.get(rundir.ATTR_TEST_ACCURACY)),
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"Pareto front ({len(front)} trials):"]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    return lines


def build_report(run_dir: Path) -> str:
    """Build report.html; never lose the run over it."""
    try:
        path = write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the run is complete either way
        return f"report: not built ({type(err).__name__}: {err}); the run directory is intact"
    return f"report: {path or Path(run_dir) / 'report.html'}"


def _storage_stop(out: Path, error: BaseException | str, done: int, total: int) -> UserError:
    """The one line a session ends with when the storage refused a write (full disk, read-only folder)."""
    if isinstance(error, BaseException):
        found = next((e for e in (error, error.__cause__, error.__context__) if isinstance(e, OSError)), None)
        number = storage_errno(error)
        where = f" ({Path(found.filename).name})" if found is not None and found.filename else ""
        reason = (found.strerror if found is not None and found.strerror else os.strerror(number or 0)) + where
    else:
        reason = os.strerror(storage_errno(error) or 0)
    return UserError(f"{out}: the run directory refused a write: {reason}; the search stopped after {done} of {total} "
                     "trials (those are kept; the trial cut short does not count); free space or make it writable, "
                     f"then continue with: python -m runner.search --out {out} --resume")


def _interrupted_by(err: BaseException) -> bool:
    """Whether ``err`` was raised while handling a KeyboardInterrupt (anywhere down its chain)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _out_of_time(space: Any, start: float) -> bool:
    """Whether the search has used up ``search.timeout_s`` since ``start`` (a perf_counter reading)."""
    return space.search.timeout_s is not None and time.perf_counter() - start >= space.search.timeout_s


def run_search(args: SearchRequest, say: Callable[[str], None] = print_line,
               progress_stream: TextIO | None = None) -> int:
    """Validate, prepare the run directory, run the trials, print the front. Returns the exit status.

    Every line for the user goes to ``say``; ``progress_stream`` is where ``progress="auto"`` looks
    for a terminal (stdout by default)."""
    import_plugins(plugin_modules())
    _check_request(args)
    mode = resolve_mode(args.progress, progress_stream)
    space, out = _load(args)
    if args.dry_run:
        _check_data(space, out, resume=False, keep=True)  # every check of the data the search would run, here too
        dry_run(space, args.trials or space.search.trials, say)
        say(f"the data passed every check; the search would write {out}")
        return 0
    executor = make_executor(space, address=args.address)
    executor.check()  # seconds, before the data are loaded
    fingerprint = _check_data(space, out, resume=args.resume, keep=executor.in_process)
    executor.prepare(say)
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--out {out}: cannot create the run directory ({err.strerror or err})") from None
        lock = runlock.RunLock.acquire(out, command=" ".join(rundir.python_command()))
        with lock:  # released on every way out: the end, an error, Ctrl-C
            return _session(args, space, out, fingerprint, executor, say=say, mode=mode)
    finally:
        executor.close()


def _session(args: SearchRequest, space: Any, out: Path, fingerprint: str | None, executor: Executor, *,
             say: Callable[[str], None], mode: str) -> int:
    """One search session in a run directory this driver holds: trials, the front, the report."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours to print
    start = time.perf_counter()
    interrupted = False
    repaired = rundir.repair_journal(out)
    if repaired:
        print(repaired, file=sys.stderr)
    rundir.write_space(out, space)
    environment = {"machine": machine(), "versions": versions("torch", "optuna", "ray", "cellsparse")}
    info = rundir.start_session(out, space, command=rundir.python_command(), address=args.address,
                                data_fingerprint=fingerprint, environment=environment)
    study = open_study(space, out)
    stale = fail_unfinished(study)
    if stale:
        say(f"marked {len(stale)} trial(s) left unfinished by an earlier session as FAIL (interrupted): {stale}")
    rundir.write_trials_csv(out, study, space.objective_names)
    total = space.search.trials
    done = trials_done(study)
    remaining = max(0, total - done)
    say(f"run {out}: {total} trials ({done} done), backend {executor.describe()}, sampler {space.search.sampler}, "
        f"{executor.concurrency} at a time")
    for record in calibrate_run(space, out):  # throughput's one scale for the whole run (none without it)
        say(f"throughput reference on {record['runtime']}: {record['rate']:,.0f} images/s (batch {record['shape'][0]}, "
            f"{record['threads']} thread(s), {record['device']})")
    progress = Progress(trials=remaining, mode=mode, emit=say)
    on_finished = TrialFinished(out, space, total=total, emit=say if mode != "none" else _silent, progress=progress)
    halted: BaseException | str | None = None  # the storage refused a write: the session stops with one line
    try:
        session = f"session-{len(info.get('sessions', [])) - 1}"
        while remaining:
            sampler = sampler_for_session(space, len(study.trials))
            study = open_study(space, out, sampler)
            rule = None if executor.uses_own_early_stopping() else early_stopping_rule(space, study)
            driver = SearchDriver(space, out, study, on_finished=on_finished, early_stopping=rule, progress=progress)
            executor.run(driver, n_trials=remaining, session=session)
            if driver.halted is not None:
                halted = driver.halted
                break
            # Trials lost with a cluster node do not count: run their replacements, while that makes progress.
            left = max(0, total - trials_done(study))
            if not executor.replaces_lost_trials or left >= remaining or _out_of_time(space, start):
                break
            remaining, session = left, f"{session}+"
    except KeyboardInterrupt:
        interrupted = True
    except Exception as err:
        if _interrupted_by(err):
            interrupted = True  # Ctrl-C landed inside Optuna's own tell and surfaced as a follow-on error
        elif storage_errno(err) is not None:
            halted = err  # a journal append the disk refused
        else:
            raise
    finally:
        executor.close()
        study = open_study(space, out)
        done = trials_done(study)
        timed_out = _out_of_time(space, start)
        complete = done >= total or timed_out
        interrupted = interrupted or not complete
        try:
            fail_unfinished(study)  # trials a Ctrl-C cut short: FAIL now, so the journal and trials.csv agree
            rundir.write_trials_csv(out, study, space.objective_names)
            rundir.finish_session(out, wall_time_s=time.perf_counter() - start, finished=complete)
        except Exception as err:
            if storage_errno(err) is None:
                raise
            halted = halted or err  # the next --resume marks the unfinished trials and rewrites the table

    if halted is not None:
        raise _storage_stop(out, halted, done, total)
    say("")
    for line in _front_table(study, space):
        say(line)
    if interrupted:
        say(f"stopped after {done} of {total} trials; continue with: {resume_command(out)}")
        return EXIT_INTERRUPTED
    if timed_out and done < total:
        say(f"search.timeout_s={space.search.timeout_s:g} reached after {done} of {total} trials")
    say(build_report(out))
    for line in export_suggestion(out):
        say(line)
    return 0


def _silent(line: str) -> None:
    """Where progress lines go under ``--quiet``."""


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out``, spelt as this search was started."""
    return command("search", "--out", out, "--resume")


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as trials finish, even in a pipe
    args = build_parser().parse_args(argv)
    try:
        return run_search(SearchRequest.from_args(args))
    except UserError as err:
        print_error(err)
        return EXIT_USER_ERROR
    except OSError as err:
        if storage_errno(err) is None:
            raise
        print_error(write_error(Path(err.filename or "the run directory"), err, "free space or make it writable, "
                                "then continue with --resume"))  # a write outside a session's own handling
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return EXIT_INTERRUPTED



# ---------------------------------------------------------------------------------------------
# What to export next, and the Python API


def export_suggestion(out: Path) -> list[str]:
    """The export command as ``runner.export`` runs it by default (the knee of the front), with the
    trial it picks and the most accurate trial beside it; nothing when no trial qualifies."""
    try:
        run = Run.load(out)
        knee, best = run.pick("knee"), run.pick("accuracy")
    except UserError:
        return []
    lines = [f"export a model: {command('export', out)}   (the knee of the front: trial {knee})"]
    if best != knee:
        lines.append(f"  the most accurate, trial {best}: {command('export', out, '--pick', 'accuracy')}")
    return lines


def search(
    space: str | Path | None,
    *,
    trials: int | None = None,
    backend: str | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    address: str | None = None,
    progress: str = "auto",
) -> Any:
    """Run a search from Python, as ``cellsparse search`` does, and return the finished run.

    Arguments are the command's flags (``None`` keeps the space file's setting). What the command
    prints goes to the ``cellsparse`` logger at INFO (``cellsparse.log``: quiet it with
    ``cellsparse.log.set_verbosity(logging.WARNING)``); ``progress`` is ``--progress`` ("epochs",
    "trials", "none", or "auto": epochs when stderr is a terminal). Returns a
    :class:`runner.run.Run` (trials, front, picks, report, export). Raises UserError (one line
    naming what is wrong, nothing written) for bad input, and KeyboardInterrupt when the search was
    stopped before its trials were done (continue with ``resume=True``)."""
    request = SearchRequest(
        space=None if space is None else Path(space), out=None if out is None else Path(out), trials=trials,
        backend=backend, address=address, resume=resume, max_concurrent=max_concurrent,
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, seed=seed, progress=progress,
    )
    if request.out is None and request.space is not None:
        request = dataclasses.replace(request, out=Path("runs") / load_space(request.space).name)
    args = request
    status = run_search(args, say=logger.info, progress_stream=sys.stderr)
    if status == EXIT_INTERRUPTED:
        raise KeyboardInterrupt(f"the search in {args.out} stopped before its trials were done; "
                                "continue with search(..., resume=True)")
    return Run.load(args.out)


if __name__ == "__main__":
    sys.exit(run_command(main))
