"""The objective registry: names, directions, construction errors, and the accuracy measure."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cellsparse.errors import UserError
from objectives import Objective, ObjectiveError, get_objective, measure_accuracy, objective_names, register_objective

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "accuracy": "maximize",
    "flops": "minimize",
    "params": "minimize",
    "latency_ms": "minimize",
    "peak_mem_mb": "minimize",
}


def test_built_in_objectives_and_directions() -> None:
    assert objective_names()[: len(EXPECTED)] == list(EXPECTED)  # plugins a test registered come after
    for name, direction in EXPECTED.items():
        objective = get_objective(name)
        assert objective.name == name and objective.direction == direction
        assert objective.unit and objective.label


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "accuracy"])
def test_cost_objectives_measure_a_positive_number(name: str) -> None:
    value = get_objective(name).measure(nn.Linear(8, 3), torch.randn(2, 8), None)
    assert isinstance(value, float) and value > 0


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="unknown objective 'acc'; valid: accuracy, flops, params"):
        get_objective("acc")


def test_an_objective_missing_a_part_fails_at_construction() -> None:
    with pytest.raises(TypeError):
        Objective("energy", "minimize", "J", "energy")  # no measure
    with pytest.raises(ValueError, match="direction"):
        Objective("energy", "lower", "J", "energy", lambda m, x, y: 0.0)
    with pytest.raises(TypeError, match="callable"):
        Objective("energy", "minimize", "J", "energy", 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_objective("flops").direction = "maximize"


def test_a_name_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_objective(Objective("flops", "minimize", "FLOPs", "FLOPs", lambda m, x, y: 0.0))


class FirstFeatureWins(nn.Module):
    """Predicts the index of the largest of the first three features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3]


def test_accuracy_on_a_hand_made_batch() -> None:
    images = torch.eye(3).repeat(2, 1)  # predictions 0, 1, 2, 0, 1, 2
    labels = torch.tensor([0, 1, 2, 1, 1, 0])
    assert measure_accuracy(FirstFeatureWins(), images, labels, chunk=4) == pytest.approx(4 / 6)
    assert get_objective("accuracy").measure(FirstFeatureWins(), images, labels) == pytest.approx(4 / 6)


def test_accuracy_needs_labels() -> None:
    with pytest.raises(ObjectiveError, match="labels"):
        get_objective("accuracy").measure(FirstFeatureWins(), torch.eye(3), None)


def test_importing_objectives_stays_light() -> None:
    code = "import sys, objectives; print(sorted({'ray', 'optuna', 'plotly'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
