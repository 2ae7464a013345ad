"""The README's `ray up` cluster file is one Ray accepts: checked against the cluster-config schema
that ships with the installed Ray, and for the pieces the README promises (token, shared storage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

CLUSTER_FILE = Path(__file__).resolve().parents[2] / "docs" / "cluster" / "aws.yaml"


def test_the_cluster_file_matches_rays_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    ray = pytest.importorskip("ray")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(yaml.safe_load(CLUSTER_FILE.read_text(encoding="utf-8")), schema)


def test_the_cluster_file_copies_the_token_and_mounts_shared_storage() -> None:
    config = yaml.safe_load(CLUSTER_FILE.read_text(encoding="utf-8"))
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("/mnt/runs" in command and "nfs4" in command for command in config["setup_commands"])
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
