"""The search on a real multi-node Ray cluster, on this machine: a head and a second node started
with ``ray start`` (loopback, token authentication as Ray sets it up, one CPU each), the search
joining with ``--address`` from a driver that holds only the token, as a laptop would. Trials must
run on both nodes and say where; a node lost mid-run fails its trial ("node lost") while the search
goes on; a killed driver is resumed from another shell; nothing of the run is left behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runner.local_cluster import LocalCluster, Node, command_of
from tests.runner.search_fixtures import journal_trials, read_trials, set_env, write_space

pytestmark = [pytest.mark.ray, pytest.mark.cluster]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    set_env(monkeypatch)  # the driver forwards CELLSPARSE_PLUGINS to the workers on every node
    # Workers take their environment from their node (`ray start`), not from the driver.
    monkeypatch.setenv("PROBE_SLEEP_S", "0.4")  # 8 steps: a trial lasts several seconds
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "cluster")
    c.root.mkdir()
    try:
        c.start_head(num_cpus=1)
        c.add_node(num_cpus=1)
        yield c
    finally:
        c.stop()
    assert not [pid for node in c.nodes for pid in node.pids()], "processes of the test cluster left running"


def _search(cluster: LocalCluster, *args: str | Path) -> subprocess.Popen:
    """``python -m runner.search ... --address`` in a shell of its own, with the token from the head."""
    env = cluster.driver_env()
    return subprocess.Popen([sys.executable, "-m", "runner.search", *map(str, args), "--address", cluster.address],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _running_on(run: Path, node: Node) -> bool:
    """Whether the journal holds a RUNNING trial that reported from ``node``."""
    try:
        trials = journal_trials(run)
    except Exception:  # noqa: BLE001 - the journal may not exist yet
        return False
    return any(t.state.name == "RUNNING" and node.node_id[:8] in str(t.user_attrs.get("node")) for t in trials)


def _wait(condition, process: subprocess.Popen, what: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the search ended before {what}:\n{process.stdout.read()}")
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"no {what} within {timeout_s} s")


def _project_processes(cluster: LocalCluster) -> list[str]:
    """Trial workers (Tune's ``ImplicitFunc`` actors) and search drivers still alive on the cluster."""
    commands = [command_of(pid) for node in cluster.nodes for pid in node.pids()]
    return [c for c in commands if "ImplicitFunc" in c or "runner.search" in c]


def test_a_driver_without_the_token_is_refused_with_one_line(cluster, tmp_path) -> None:
    space = write_space(tmp_path, trials=1, backend="ray")
    env = {k: v for k, v in cluster.driver_env().items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    out = subprocess.run([sys.executable, "-m", "runner.search", "--space", str(space), "--out", "run", "--address",
                          cluster.address], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stdout + out.stderr
    error = out.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: --address {cluster.address}: the cluster refused"), error
    assert "RAY_AUTH_TOKEN_PATH" in error[0]
    assert not (tmp_path / "run").exists()


def test_trials_run_on_both_nodes_and_say_where(cluster, tmp_path) -> None:
    space = write_space(tmp_path, trials=4, backend="ray", max_concurrent=2, epochs=2, train=128)
    search = _search(cluster, "--space", space, "--out", "run")
    out, _ = search.communicate(timeout=300)
    assert search.returncode == 0, out
    rows = read_trials(tmp_path / "run")
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4
    nodes = {r["node"] for r in rows}
    head, worker = cluster.nodes
    assert {n.split("(")[1].rstrip(")") for n in nodes} == {head.node_id[:8], worker.node_id[:8]}, nodes
    report = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert all(node in report for node in nodes)


def test_a_lost_node_fails_its_trial_and_the_search_goes_on(cluster, tmp_path) -> None:
    space = write_space(tmp_path, trials=4, backend="ray", max_concurrent=2, epochs=2, train=128)
    run = tmp_path / "run"
    search = _search(cluster, "--space", space, "--out", run)
    worker = cluster.nodes[1]
    _wait(lambda: _running_on(run, worker), search, "trial running on the second node")
    cluster.kill_raylet(worker)
    out, _ = search.communicate(timeout=300)
    assert search.returncode == 0, out
    rows = read_trials(run)
    lost = [r for r in rows if r["state"] == "FAIL"]
    assert len(lost) == 1 and lost[0]["error"].startswith("node lost:"), rows
    assert worker.node_id[:8] in lost[0]["node"] and worker.node_id[:8] in lost[0]["error"]
    assert [r["state"] for r in rows].count("COMPLETE") == 4  # the lost one is replaced: 4 trials run
    assert not _project_processes(cluster)


def test_a_killed_driver_is_resumed_from_another_shell(cluster, tmp_path) -> None:
    space = write_space(tmp_path, trials=4, backend="ray", max_concurrent=2, epochs=2, train=128)
    run = tmp_path / "run"
    search = _search(cluster, "--space", space, "--out", run)
    _wait(lambda: (run / "trials.csv").is_file() and any(r["state"] == "COMPLETE" for r in read_trials(run)),
          search, "complete trial")
    search.kill()
    search.wait(timeout=30)
    resumed = _search(cluster, "--out", run, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    states = [t.state.name for t in journal_trials(run)]
    assert states.count("COMPLETE") == 4 and set(states) <= {"COMPLETE", "FAIL"}
    deadline = time.monotonic() + 30  # Ray ends a dead driver's workers on its own; give it the time
    while _project_processes(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _project_processes(cluster)
