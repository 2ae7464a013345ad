"""A Ray cluster of several nodes on this machine, started with ``ray start`` as a user would.

Every node listens on loopback (127.0.0.1) with its own CPUs, its own ports and its own temp
folder; the head runs with token authentication, which ``ray start --head`` turns on by itself once a
token exists, and the token lives in a private ``HOME`` so that the user's own ``~/.ray`` is never
touched. Other nodes and drivers get the token the way a second machine would: ``RAY_AUTH_MODE``
and ``RAY_AUTH_TOKEN_PATH``.

Each ``ray start`` runs in a session of its own; every process it leaves (GCS, raylet, agents,
workers) stays in that process group, so :meth:`LocalCluster.stop` stops exactly what this cluster
started and nothing else on the machine (never ``ray stop``, which stops every Ray on it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
PLUGINS_ENV = "CELLSPARSE_PLUGINS"  # not given to nodes: the search forwards it to its workers
HOST = "127.0.0.1"


def free_port() -> int:
    """A port the kernel is not using now, outside Ray's default worker-port range (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if not 10002 <= port <= 19999:
            return port


def _processes() -> list[tuple[int, int, int]]:
    """(pid, ppid, process group) of every live process, read from /proc (no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp
        except OSError:
            continue
        if fields[0] != "Z":
            found.append((int(entry.name), int(fields[1]), int(fields[2])))
    return found


def _group_pids(pgid: int) -> list[int]:
    """The live processes of group ``pgid`` and their descendants (Ray puts workers in groups of their own)."""
    processes = _processes()
    pids = {pid for pid, _, group in processes if group == pgid}
    while True:
        more = {pid for pid, parent, _ in processes if parent in pids} - pids
        if not more:
            return sorted(pids)
        pids |= more


def command_of(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _base_env() -> dict[str, str]:
    """This process's environment without Ray's settings (each node and driver gets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


@dataclass
class Node:
    name: str
    pgid: int
    temp_dir: Path

    def pids(self) -> list[int]:
        return _group_pids(self.pgid)

    @property
    def node_id(self) -> str:
        """Ray's id of this node (Ray names per-node port files in its session folder after it)."""
        for path in (self.temp_dir / "session_latest").glob("metrics_export_port_*"):
            return path.name.rsplit("_", 1)[1]
        raise RuntimeError(f"node {self.name}: no node id in {self.temp_dir}")

    def raylet_pid(self) -> int:
        for pid in self.pids():
            if "/raylet/raylet " in command_of(pid):
                return pid
        raise RuntimeError(f"node {self.name}: no raylet running")


@dataclass
class LocalCluster:
    root: Path
    nodes: list[Node] = field(default_factory=list)
    address: str = ""

    @property
    def token_path(self) -> Path:
        return self.root / "head-home" / ".ray" / "auth_token"

    def driver_env(self) -> dict[str, str]:
        """What a driver (or a node) on another machine needs to join: the token mode and its file."""
        return {**_base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> Node:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"ray-{name}-", dir="/tmp"))  # short: Ray's socket paths have a limit
        command = [RAY, "start", *args, f"--node-ip-address={HOST}", "--num-gpus=0", "--disable-usage-stats",
                   f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
                   f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        env = {k: v for k, v in env.items() if k != PLUGINS_ENV}
        log = (self.root / f"{name}.log").open("w")
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, proc.pid, temp_dir)
        self.nodes.append(node)
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{(self.root / f'{name}.log').read_text()[-3000:]}")
        return node

    def start_head(self, *, num_cpus: int = 1) -> str:
        home = self.root / "head-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {**_base_env(), "HOME": str(home)}
        # A token under HOME/.ray, then a plain `ray start --head`: Ray turns token auth on by itself.
        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
        port = free_port()
        self._start("head", ["--head", f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false"], env)
        self.address = f"{HOST}:{port}"
        if not self.token_path.is_file():
            raise RuntimeError("the head node wrote no auth token")
        return self.address

    def add_node(self, *, num_cpus: int = 1) -> Node:
        name = f"node{len(self.nodes)}"
        home = self.root / f"{name}-home"  # no token of its own: it gets the head's, as a second machine would
        home.mkdir(parents=True, exist_ok=True)
        return self._start(name, [f"--address={self.address}", f"--num-cpus={num_cpus}"],
                           {**self.driver_env(), "HOME": str(home)})

    def kill_raylet(self, node: Node) -> None:
        os.kill(node.raylet_pid(), signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, to every process of every node this cluster started (and only those)."""
        for sig, grace_s in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):  # Ray's agents may ignore SIGTERM
            for pid in {pid for node in self.nodes for pid in node.pids()}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(n.pids() for n in self.nodes):
                time.sleep(0.2)
