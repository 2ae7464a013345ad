"""Adding an objective is one registry entry: a plugin's objective reaches the space file and its
constraint, trials.csv, the report's axes and the model card with no other edit."""

from __future__ import annotations

import json
import textwrap

import pytest

from runner.search import main as search
from tests.runner.search_fixtures import NAME, plugins_env, read_trials, set_env

PLUGIN = "tests.objectives.toy_objective"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_registered_objective_reaches_every_output(monkeypatch, tmp_path) -> None:
    set_env(monkeypatch)
    monkeypatch.setenv("CELLSPARSE_PLUGINS", f"{plugins_env()},{PLUGIN}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(textwrap.dedent(f"""\
        name: toy
        seed: 0
        data: {{source: synthetic, image_size: 16, train: 64, val: 32, test: 32}}
        objectives: {{accuracy: maximize, conv_weights: minimize}}
        constraints: {{max_conv_weights: 150}}
        training: {{epochs: 1, batch_size: 32}}
        search: {{trials: 4, sampler: {{name: random, seed: 0}}, backend: optuna,
                 reference_point: {{accuracy: 0.0, conv_weights: 1000}}}}
        space:
          strategy:
            {NAME}: {{width: {{int: [2, 8]}}, k_fraction: 0.5, behaviour: ok}}
        """))
    assert search(["--space", "space.yaml", "--out", "run"]) == 0
    rows = read_trials(tmp_path / "run")
    weights = [float(r["conv_weights"]) for r in rows]
    assert all(w > 0 for w in weights)
    feasible = [r["feasible"].lower() == "true" for r in rows]
    assert feasible == [w <= 150 for w in weights] and any(feasible) and not all(feasible)
    report = (tmp_path / "run" / "report.html").read_text()
    assert "toy conv weights" in report

    from runner.export import main as export

    assert export(["run", "--formats", "onnx", "--no-latency"]) == 0
    (exported,) = (tmp_path / "run" / "export").iterdir()  # export/trial-<the knee>
    card = json.loads((exported / "model_card.json").read_text())
    assert card["metrics"]["objectives"]["conv_weights"] in weights
