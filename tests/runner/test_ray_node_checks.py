"""The Ray backend's node and join checks, without a cluster: Ray's node table is stood in for."""

from __future__ import annotations

import os
import socket

import pytest

from runner.engine import ray_tune


def _nodes(monkeypatch: pytest.MonkeyPatch, table: list[dict]) -> None:
    monkeypatch.setattr(ray_tune.ray, "nodes", lambda: table)


def test_a_node_is_lost_when_ray_says_so_or_its_raylet_port_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        _nodes(monkeypatch, [
            {"NodeID": "alive", "Alive": True, "NodeManagerAddress": "127.0.0.1", "NodeManagerPort": open_port},
            {"NodeID": "silent", "Alive": True, "NodeManagerAddress": "127.0.0.1", "NodeManagerPort": closed_port},
            {"NodeID": "dead", "Alive": False, "NodeManagerAddress": "127.0.0.1", "NodeManagerPort": open_port},
        ])
        assert not ray_tune.node_lost("alive")
        assert ray_tune.node_lost("silent")  # listed alive, but its raylet no longer answers
        assert ray_tune.node_lost("dead")
        assert ray_tune.node_lost("unknown")  # the cluster no longer knows it


def test_what_ray_writes_while_joining_is_held_back_only_when_joining_fails(capfd: pytest.CaptureFixture[str]) -> None:
    with ray_tune._stderr_kept() as said:
        os.write(2, b"a warning from the C++ core\n")
        assert "a warning" in said()
    assert "a warning from the C++ core" in capfd.readouterr().err  # success: passed on as it was
    with pytest.raises(RuntimeError), ray_tune._stderr_kept() as said:
        os.write(2, b"Authentication token is missing or incorrect\n")
        assert ray_tune._TOKEN_REFUSED in said()
        raise RuntimeError("join failed")
    assert "Authentication token" not in capfd.readouterr().err  # failure: the caller explains it in one line
