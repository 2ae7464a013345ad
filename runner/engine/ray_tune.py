"""The Ray Tune backend (the default): trials run in Ray worker processes, locally or on a cluster.

The only module that imports Ray; ``runner.search`` imports it only when the ray backend is chosen.

Wiring (Ray 2.60, Optuna 5.0), through Tune's public interfaces only: :class:`DriverSearcher` (a
``Searcher``) asks the search driver for each trial and tells it how the trial ended, behind a
``ConcurrencyLimiter``; :class:`DriverScheduler` (a ``TrialScheduler``) hands each epoch's result to
the driver's early-stopping rule. The driver (``runner.engine.driver``) owns every ask and tell, so a trial
ends the same way here as in process: a NaN or missing objective is told FAIL with the reason, a
trial stopped before its final result (``final: True``) is told PRUNED, a dead worker is told FAIL
("worker died"). Trials still running when ``time_budget_s`` (``search.timeout_s``) ends the session
never reach the searcher (Ray 2.60); ``runner.search`` records them as interrupted afterwards, as
after Ctrl-C.

Trials report every objective each epoch (Tune checks every result for every metric) through
``ray.tune.report`` (``ray.train.report`` raises inside Tune on 2.60). A trial that fails reports a
final result with ``failed: True`` instead of raising, so its error lands in the journal.

On a cluster (``--address``), every node needs this project installed and the run directory on
storage all nodes see (NFS or similar): trials write their folders there and Ray keeps its own files
under ``ray/`` in it. Ray 2.60's ``ray start --head`` turns token authentication on by default; a
driver on another machine needs ``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH``; on the head it is read from ``~/.ray/auth_token``).

Ctrl-C (SIGINT to the driver, from a terminal or ``kill -INT``) ends the session as on the optuna
backend: Tune's own handler (which ends the Tune run and returns as if it had finished, so the search
would start a new session and run on) is switched off (``TUNE_DISABLE_SIGINT_HANDLER``) and
:class:`InterruptStopper` stops every trial through Tune's public ``Stopper`` interface; ``run_ray``
then raises KeyboardInterrupt, so ``runner.search`` marks the running trials interrupted, prints the
resume command, shuts Ray down and exits with 130. A second Ctrl-C raises at once.

Resume does not use ``Tuner.restore``: after a hard kill Ray's experiment snapshot lags the journal
(a trial the journal holds as COMPLETE may still be RUNNING in the snapshot and would run again).
``runner.search`` instead fails the journal's unfinished trials and starts a new Tune session for
the remaining trials on the same study; Ray keeps each session under ``ray/session-<k>/``. For the
same reason the searcher's part of Ray's experiment snapshot is a note, not a pickle of the searcher:
pickling it would gain nothing and can fail (after a worker dies, Ray's tqdm integration replaces
``builtins.print``, and anything holding the old ``print`` no longer pickles), which would abort the
whole search at the next snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.stopper import Stopper

from cellsparse import rundir
from cellsparse.commands import command
from cellsparse.errors import UserError, describe_error
from runner.engine.driver import SearchDriver
from runner.engine.execute import TrialSettings, execute
from runner.engine.plugins import PLUGINS_ENV
from runner.engine.sampler import PAYLOAD_KEY
from search_space.spec import SearchSpace

logger = logging.getLogger(__name__)

# The define-by-run function builds each sampled model to check its FLOPs budget on purpose (that is
# what keeps over-budget configs from training); Ray's hint that it should take under 1 s is noise.
warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")

CRASHED = "worker died (out of memory or killed?); Ray's log is under the run's ray/ folder"
NODE_LOST = rundir.NODE_LOST + ": {node} left the Ray cluster while this trial ran on it; a new trial takes its place"
NODE_KEY, NODE_ID_KEY = "node", "node_id"  # in every result a trial reports
STARTED_KEY = "started"  # the first result, before training: only where the trial runs


# ---------------------------------------------------------------------------------------------
# Connecting


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS frame


def check_address(address: str, *, timeout_s: float = 3.0) -> None:
    """Fail fast with one line when a ``host:port`` cluster address does not answer as Ray does.

    ``ray.init`` itself may wait a minute before giving up on an unreachable head node, and over
    five minutes on an open port that is not Ray. Ray's GCS (and the Ray Client server) speak gRPC,
    which is HTTP/2: sent the HTTP/2 client preface, they answer with a SETTINGS frame at once.
    Anything else (an HTTP/1 server, a database, a silent port) is refused within ``2 * timeout_s``.
    """
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected host:port (e.g. 10.0.0.5:6379), 'auto' or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            try:
                conn.sendall(_HTTP2_PREFACE)
                reply = conn.recv(9)  # a frame header: length (3 bytes), type, flags, stream id
            except OSError:
                reply = b""
    except OSError as err:
        raise UserError(f"--address {address}: no Ray cluster answers there ({err.strerror or err})") from None
    if len(reply) < 4 or reply[3] != 0x4:
        raise UserError(f"--address {address}: something listens there, but it is not a Ray cluster (no gRPC answer "
                        f"within {timeout_s:g} s); give the head node's GCS port (ray start --head prints it, "
                        "6379 by default)")


def connect(address: str | None) -> bool:
    """Start a local Ray instance or join ``address``; return whether this call started Ray."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if os.environ.get(PLUGINS_ENV):  # workers on a cluster's nodes take their node's environment, not ours
        kwargs["runtime_env"] = {"env_vars": {PLUGINS_ENV: os.environ[PLUGINS_ENV]}}
    if address:
        check_address(address)
        with _stderr_kept() as said:
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as err:
                if _TOKEN_REFUSED in said() or isinstance(err, ray.exceptions.AuthenticationError):
                    raise UserError(f"--address {address}: the cluster refused this driver's auth token ({_TOKEN_REFUSED}); "
                                    f"{_TOKEN_HINT}") from None
                raise UserError(f"--address {address}: cannot join the Ray cluster ({str(err).splitlines()[0]})") from None
    else:
        # Trials train with torch, so the GPUs torch can use are the ones to offer (Ray's own count goes through NVML).
        ray.init(num_cpus=os.cpu_count(), num_gpus=_torch_gpus(), **kwargs)
    return True


_TOKEN_REFUSED = "Authentication token is missing or incorrect"
_TOKEN_HINT = ("give this shell the cluster's token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<file> or "
               "RAY_AUTH_TOKEN=<token> (`ray get-auth-token` prints it on the head node)")


@contextlib.contextmanager
def _stderr_kept() -> Iterator[Callable[[], str]]:
    """Hold back what Ray's C++ core writes to file descriptor 2 while joining a cluster (a refused
    token repeats one warning for 20 seconds): the caller reads it to explain a failure in one line;
    on success it is passed on as it was."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = True

        def said() -> str:
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield said
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                sys.stderr.write(said())


def _torch_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_resources(space: SearchSpace) -> None:
    """A trial asking for more than the whole cluster has would wait forever: say so instead."""
    have = ray.cluster_resources()
    cpus, gpus = space.search.cpus_per_trial, space.search.gpus_per_trial
    if cpus > have.get("CPU", 0):
        raise UserError(f"search.resources.cpu={cpus:g} per trial, but the Ray cluster has {have.get('CPU', 0):g} CPUs")
    if gpus > have.get("GPU", 0):
        raise UserError(f"search.resources.gpu={gpus:g} per trial, but the Ray cluster has {have.get('GPU', 0):g} GPUs")


def node_lost(node_id: str, *, timeout_s: float = 2.0) -> bool:
    """Whether the Ray node ``node_id`` has left the cluster. Ray's health check takes seconds to mark
    a dead node, so a node still listed alive is asked directly: a raylet that no longer accepts a
    connection on its port is gone."""
    for node in ray.nodes():
        if node.get("NodeID") != node_id:
            continue
        if not node.get("Alive"):
            return True
        try:
            socket.create_connection((node["NodeManagerAddress"], int(node["NodeManagerPort"])), timeout=timeout_s).close()
        except (OSError, KeyError, ValueError):
            return True
        return False
    return True  # the cluster no longer knows it


def disconnect() -> None:
    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# Trial side (Ray worker)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (bool, int, float, str))}


def _where() -> dict[str, str]:
    """The node this worker runs on, sent with every result: a readable label (IP and the start of
    Ray's node id, since several nodes may share one IP) and the full id (to ask Ray if it is alive)."""
    node_id = ray.get_runtime_context().get_node_id()
    return {NODE_KEY: f"{ray.util.get_node_ip_address()} ({node_id[:8]})", NODE_ID_KEY: node_id}


def _trainable(config: dict[str, Any], settings: TrialSettings) -> None:
    payload = config[PAYLOAD_KEY]
    where = _where()
    nan = {name: math.nan for name in settings.space.objective_names}  # Tune wants every metric in every result
    tune.report({**nan, "epoch": 0, STARTED_KEY: True, **where})  # where it runs, known before it can die
    try:
        metrics = execute(payload, settings, lambda row: tune.report({**_scalars(row), **where}))
    except Exception as err:
        rundir.write_traceback(Path(settings.run_dir), int(payload["number"]), "".join(traceback.format_exception(err)))
        tune.report({**nan, "epoch": 0, "final": True, "failed": True, "error": describe_error(err), **where})
        return
    tune.report({**_scalars(metrics), "epoch": int(metrics.get("epochs") or 0), "final": True, "failed": False, **where})


# ---------------------------------------------------------------------------------------------
# Driver side


class DriverSearcher(Searcher):
    """Tune's ``Searcher`` interface over the search driver: ``suggest`` asks the driver for a trial,
    ``on_trial_complete`` tells it how the trial ended (FAIL/PRUNED/COMPLETE, never left RUNNING).

    Written against Tune's public ``Searcher`` interface only. Ray's experiment snapshot gets a note,
    not a pickle: the journal is the record, and resume reads it.
    """

    def __init__(self, driver: SearchDriver, *, epochs: bool = False) -> None:
        super().__init__()
        self.driver = driver
        self.epochs = epochs  # hand each epoch's figures to the driver (when DriverScheduler does not)
        self._numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._nodes: dict[str, tuple[str, str]] = {}  # Tune trial id -> (node label, Ray node id) it runs on

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.driver.halted is not None:  # the storage refused a write: no more trials
            return Searcher.FINISHED
        number, payload = self.driver.ask()
        self._numbers[trial_id] = number
        return {PAYLOAD_KEY: payload}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The first result (reported before training) says where the trial runs: recorded once. With
        Tune's own ASHA scheduling, each epoch's figures go to the driver from here (progress lines)."""
        number = self._numbers.get(trial_id)
        if number is not None and trial_id not in self._nodes and result.get(NODE_KEY):
            self._nodes[trial_id] = (str(result[NODE_KEY]), str(result.get(NODE_ID_KEY) or ""))
            self.driver.placed(number, self._nodes[trial_id][0])
        if self.epochs and number is not None and not result.get("final") and not result.get(STARTED_KEY):
            self.driver.report(number, int(result.get("epoch") or 0), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self._numbers.pop(trial_id, None)
        node, node_id = self._nodes.pop(trial_id, ("", ""))
        if number is None:
            return
        if result and result.get("final") and not result.get("failed"):
            self.driver.complete(number, result)
        elif result and result.get("failed"):
            self.driver.fail(number, str(result.get("error") or "failed"))  # the worker wrote error.txt
        elif error:
            self.driver.fail(number, NODE_LOST.format(node=node) if node_id and node_lost(node_id) else CRASHED)
        elif result:
            self.driver.prune(number)  # stopped before its final result: early stopping, or the time budget
        else:
            self.driver.fail(number, "stopped before reporting any result")

    def save(self, checkpoint_path: str) -> None:
        """Ray's experiment snapshot: a note only; the journal is the record and resume reads it."""
        Path(checkpoint_path).write_text(
            json.dumps({"searcher": type(self).__name__, "state": "in the run's study.journal (runner.search --resume)"}),
            encoding="utf-8",
        )

    def restore(self, checkpoint_path: str) -> None:
        raise UserError(f"this run resumes from its study.journal: {command('search', '--out', 'RUN_DIR', '--resume')}")


class DriverScheduler(FIFOScheduler):
    """First in, first out, with the driver's early-stopping rule deciding after each epoch's result
    whether a trial goes on (Tune's public ``TrialScheduler`` interface)."""

    def __init__(self, driver: SearchDriver) -> None:
        super().__init__()
        self.driver = driver

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("final") or result.get(STARTED_KEY) or "epoch" not in result:
            return TrialScheduler.CONTINUE
        number = int(trial.config[PAYLOAD_KEY]["number"])
        return TrialScheduler.STOP if self.driver.report(number, int(result["epoch"]), result) else TrialScheduler.CONTINUE


class InterruptStopper(Stopper):
    """Stops the whole Tune session once Ctrl-C has reached the driver (see :func:`sigint_stops`).

    Trials it stops never reach the searcher (Tune stops them without ``on_trial_complete``), so they
    stay RUNNING in the journal and ``runner.search`` records them as interrupted, as on the optuna
    backend."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.requested


@contextlib.contextmanager
def sigint_stops(stopper: InterruptStopper) -> Iterator[None]:
    """While the block runs, SIGINT asks ``stopper`` to stop the session instead of Tune's own handler
    (which would end the Tune run as if it had finished); a second SIGINT gets the handler from before
    (Python's: KeyboardInterrupt at once). An ignored SIGINT stays ignored, as it would in process."""
    saved_env = os.environ.get(_TUNE_SIGINT)
    os.environ[_TUNE_SIGINT] = "1"
    previous = signal.getsignal(signal.SIGINT)
    installed = threading.current_thread() is threading.main_thread() and previous is not signal.SIG_IGN

    def handler(signum: int, frame: Any) -> None:
        stopper.requested = True
        signal.signal(signal.SIGINT, previous)

    if installed:
        signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)
        if saved_env is None:
            os.environ.pop(_TUNE_SIGINT, None)
        else:
            os.environ[_TUNE_SIGINT] = saved_env


_TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


def _ray_asha(space: SearchSpace) -> ASHAScheduler:
    """Tune's own ASHA on accuracy. Its ``max_t`` is one past the last epoch: ASHA stops a trial whose
    time reaches ``max_t``, which at the last epoch would cut it before its final result."""
    config = space.search.early_stopping
    epochs = max(int(v) for v in space.training["epochs"].values_at_bounds())
    return ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max", grace_period=config.grace_epochs,
                         reduction_factor=config.reduction_factor, max_t=epochs + 1)


def run_ray(driver: SearchDriver, *, n_trials: int, session: str, ray_asha: bool = False) -> None:
    """Run ``n_trials`` more trials of the driver's study as one Tune session (Ray already connected).

    ``ray_asha``: stop trials with Tune's own ``ASHAScheduler`` on accuracy alone (the single-metric
    baseline ``early_stopping: {name: asha}`` is compared against) instead of the driver's rule.
    """
    space = driver.space
    settings = TrialSettings.for_run(space, driver.run_dir)
    resources = {"cpu": space.search.cpus_per_trial, "gpu": space.search.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(_trainable, settings=settings), resources)
    stopper = InterruptStopper()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(DriverSearcher(driver, epochs=ray_asha), max_concurrent=space.search.max_concurrent),
            scheduler=_ray_asha(space) if ray_asha else DriverScheduler(driver),
            num_samples=n_trials,
            reuse_actors=True,  # one worker process serves many trials: data is loaded once per worker
            time_budget_s=space.search.timeout_s,
        ),
        run_config=tune.RunConfig(
            name=session,
            storage_path=str((Path(driver.run_dir) / rundir.RAY_DIR).resolve()),
            failure_config=tune.FailureConfig(max_failures=0),  # a retried trial would count twice
            stop=stopper,
            verbose=0,
        ),
    )
    with sigint_stops(stopper):
        tuner.fit()
    if stopper.requested:
        raise KeyboardInterrupt("stopped by SIGINT")
