"""Behaviour kept: a short seeded optuna-backend run samples the same configs and, on CPU, trains to
the same numbers. A change that moves them (a new default, a different loop) must re-pin them here
on purpose, saying why in its commit."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from runner.search import main
from tests.runner.search_fixtures import read_trials, set_env

SPACE = textwrap.dedent("""\
    name: pinned
    seed: 3
    data: {source: synthetic, image_size: 16, train: 96, val: 48, test: 48, augment: true}
    objectives: {accuracy: maximize, flops: minimize}
    training: {epochs: 2, batch_size: 32, lr: {log: [1.0e-3, 1.0e-2]}, weight_decay: 0.05, warmup_epochs: 0.5}
    search: {trials: 4, sampler: {name: tpe, seed: 3}, backend: optuna, max_concurrent: 1, resources: {cpu: 1, gpu: 0}}
    space:
      strategy:
        dense_cnn: {width: [4, 8], stages: {int: [1, 2]}, stem_stride: [1, 2]}
        dense_vit: {patch_size: [4, 8], embed_dim: [16, 32], num_heads: 2, depth: 1}
    """)

# (strategy, sampled keys, lr, FLOPs, val accuracy, test accuracy, last epoch's training loss)
PINNED = [
    ("dense_vit", {"patch_size": 8, "embed_dim": 32}, 0.001335319866828355, 134592.0, 0.291667, 0.1875, 1.57199),
    ("dense_cnn", {"width": 4, "stages": 1, "stem_stride": 1}, 0.004745204154703384, 202792.0, 0.1875, 0.1875, 1.64386),
    ("dense_cnn", {"width": 4, "stages": 1, "stem_stride": 2}, 0.0027571076144843397, 50728.0, 0.1875, 0.208333, 1.60509),
    ("dense_vit", {"patch_size": 4, "embed_dim": 32}, 0.008637412281434829, 364992.0, 0.208333, 0.208333, 1.66105),
]


@pytest.fixture()
def run_dir(monkeypatch, tmp_path) -> Path:
    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    assert main(["--space", "space.yaml", "--out", str(tmp_path / "run")]) == 0
    return tmp_path / "run"


def test_a_seeded_run_keeps_its_configs_and_numbers(run_dir: Path) -> None:
    rows = read_trials(run_dir)
    assert len(rows) == len(PINNED)
    for row, (strategy, keys, lr, flops, val, test, loss) in zip(rows, PINNED, strict=True):
        number = row["number"]
        config = json.loads((run_dir / "trials" / number / "config.json").read_text())
        history = json.loads((run_dir / "trials" / number / "history.json").read_text())
        assert config["strategy"] == strategy, number
        assert {key: config[key] for key in keys} == keys, number
        assert config["lr"] == pytest.approx(lr, rel=1e-12), number
        assert float(row["flops"]) == flops, number
        assert float(row["accuracy"]) == pytest.approx(val, abs=1e-6), number
        assert float(row["test_accuracy"]) == pytest.approx(test, abs=1e-6), number
        assert history[-1]["train_loss"] == pytest.approx(loss, abs=1e-4), number
