"""The typed reader of a finished run's space.yaml: the fields report, export and Pareto code read,
and one line naming the file and the key for a field that is not what the search writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cellsparse.errors import UserError
from cellsparse.run_space import RunSpace, read_run_space

SPACE = {
    "name": "cells", "seed": 3,
    "data": {"source": "synthetic", "image_size": 64},
    "objectives": {"accuracy": "maximize", "flops": "minimize", "params": "minimize"},
    "constraints": {"max_flops": 2.0e7, "max_params": None},
    "search": {"reference_point": {"params": 1.0e6}, "sampler": {"name": "tpe"}},
    "space": {"strategy": {"dense_cnn": {}, "sparse_topk": {}}},
}


def write(tmp_path: Path, space: object) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return path


def test_the_fields_come_back_typed(tmp_path: Path) -> None:
    space = read_run_space(write(tmp_path, SPACE))
    assert space.name == "cells" and space.seed == 3 and space.image_size == 64
    assert space.objectives == {"accuracy": "maximize", "flops": "minimize", "params": "minimize"}
    assert space.constraints == {"max_flops": 2.0e7}  # null: not set
    assert space.limit("flops") == 2.0e7 and space.limit("params") is None and space.limit("accuracy") is None
    assert space.strategies == ["dense_cnn", "sparse_topk"]
    point, origin = space.reference_point()
    assert point == {"accuracy": 0.0, "flops": 2.0e7, "params": 1.0e6}
    assert "accuracy = 0" in origin and "flops = constraints.max_flops" in origin


def test_a_reference_point_needs_a_bound_for_every_objective() -> None:
    space = RunSpace.parse({"objectives": {"accuracy": "maximize", "latency_ms": "minimize"}}, Path("s.yaml"))
    point, reason = space.reference_point()
    assert point is None and "latency_ms" in reason


@pytest.mark.parametrize(("change", "message"), [
    ({"objectives": None}, "'objectives' must map objective names"),
    ({"objectives": {"accuracy": "best"}}, "must be 'maximize' or 'minimize'"),
    ({"constraints": {"max_flops": "lots"}}, "constraints.max_flops must be a finite number, got 'lots'"),
    ({"constraints": [1, 2]}, "constraints must be a mapping, got list"),
    ({"search": {"reference_point": {"flops": float("inf")}}}, "search.reference_point.flops must be a finite number"),
    ({"search": {"reference_point": [0, 1]}}, "search.reference_point must be a mapping"),
])
def test_a_bad_field_is_one_line_naming_the_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path, {**SPACE, **change})
    with pytest.raises(UserError) as err:
        read_run_space(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_a_file_that_is_not_a_mapping_or_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(UserError, match="expected a YAML mapping"):
        read_run_space(path)
    path.write_text("a: [\n", encoding="utf-8")
    with pytest.raises(UserError, match="not valid YAML"):
        read_run_space(path)
