"""The deploy runtimes a trial's throughput is timed on, the min_throughput budget, and a search with it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cellsparse.rundir import CALIBRATION_FILE, read_trials
from objectives import deployed, measure_objective, measure_throughput, throughput
from runner.engine.deploy import PREPARE, calibrate_run, deployment_for, pt2_file_prepare, pt2_prepare, use_space_deployment
from runner.engine.sampler import check_costs
from runner.engine.trial import record_infeasible
from search_space.build import build_model, default_config
from search_space.spec import DEPLOY_RUNTIMES, DeploySpec, load_space
from tests.runner.search_fixtures import run_search_cli, set_env, write_space


def test_every_runtime_the_space_accepts_has_a_maker():
    assert sorted(PREPARE) == sorted(DEPLOY_RUNTIMES)


@pytest.mark.parametrize("runtime", DEPLOY_RUNTIMES)
def test_each_runtime_runs_the_model_as_exported(runtime):
    model = build_model(default_config("dense_cnn"), 3, 4, 16).eval()
    batch = torch.randn(4, 3, 16, 16)
    run = PREPARE[runtime](model, batch, 1)
    with torch.no_grad():
        expected = model(batch).numpy()
    got = run()
    assert np.allclose(np.asarray(got), expected, atol=1e-4)  # the figure is of this model, not another
    with deployed(deployment_for(DeploySpec(runtime, batch_size=8, threads=1))):
        figures = measure_objective("throughput", model, batch)
    assert figures["throughput"] > 0 and figures["throughput_spread"] >= 0


@pytest.mark.parametrize("strategy", ["span_pyramid", "tnet_traversal"])
def test_the_timed_pt2_program_computes_what_the_deployed_file_computes(strategy):
    # the objective times a static-batch program from memory; the file export writes has a dynamic batch
    model = build_model(default_config(strategy), 3, 4, 32).eval()
    batch = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    timed, deployed_file = pt2_prepare(model, batch, 1)(), pt2_file_prepare(model, batch, 1)()
    assert np.allclose(np.asarray(timed), np.asarray(deployed_file), atol=1e-5)


def _space(tmp_path, constraint: str):
    path = tmp_path / "space.yaml"
    path.write_text("objectives: {accuracy: maximize, throughput: maximize}\n"
                    "data: {source: synthetic, image_size: 16}\n"
                    f"constraints: {{{constraint}}}\n"
                    "search: {reference_point: {accuracy: 0, throughput: 1}}\n"
                    "deploy: {runtime: eager, batch_size: 8, threads: 1, calibrate: true}\n"
                    "space: {strategy: {dense_cnn: {}}}\n", encoding="utf-8")
    return load_space(path)


def test_min_throughput_is_checked_before_training(tmp_path):
    config = {**default_config("dense_cnn")}
    assert check_costs(config, _space(tmp_path, "min_throughput: 1.0"))["throughput"] < 0  # feasible
    over = check_costs(config, _space(tmp_path, "min_throughput: 1.0e12"))["throughput"]
    assert over > 0  # infeasible: 1e12 images/s is out of reach
    metrics = record_infeasible({**config, "epochs": 1}, shape=(3, 16, 16), num_classes=5, trial_dir=tmp_path / "0",
                                objectives=["accuracy", "throughput"], constraints={"throughput": over})
    assert metrics["feasible"] is False and metrics["throughput"] > 0 and "throughput_spread" in metrics


def search_with_throughput(tmp_path, monkeypatch, capsys, *, deploy: str, floor: float) -> tuple:
    """A 2-trial probe_net search with throughput as an objective, ``deploy`` and a throughput floor:
    (the trials table, what the search printed)."""
    set_env(monkeypatch)
    space = write_space(tmp_path, trials=2, extra_objectives=", throughput: maximize")
    space.write_text(space.read_text() + f"deploy: {deploy}\nconstraints: {{min_throughput: {floor}}}\n",
                     encoding="utf-8")
    status, out, err = run_search_cli(capsys, "--space", space, "--out", tmp_path / "run")
    assert status == 0, out + err
    return read_trials(tmp_path / "run" / "trials.csv", ["accuracy", "flops", "throughput"]), out


def test_a_search_with_throughput_records_it_and_builds_its_report(tmp_path, monkeypatch, capsys):
    trials, out = search_with_throughput(tmp_path, monkeypatch, capsys, floor=1.0,
                                         deploy="{runtime: pt2, batch_size: 16, threads: 1, calibrate: true}")
    columns = list(trials.columns)
    assert columns[columns.index("flops") + 1:columns.index("flops") + 4] == [
        "throughput", "throughput_spread", "throughput_raw"]
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) == 2 and bool(done["feasible"].all())
    assert (done["throughput"] > 0).all() and (done["throughput_spread"] >= 0).all()
    assert pd.api.types.is_float_dtype(done["throughput_raw"])
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "throughput (max)" in html and "throughput: " in html  # an objective of the run, on the points
    records = json.loads((tmp_path / "run" / CALIBRATION_FILE).read_text())  # the run's one scale
    assert [r["runtime"] for r in records] == ["pt2"] and all(r["rate"] > 0 for r in records)
    assert "throughput reference on pt2: " in out


def test_the_run_calibration_is_measured_once_and_every_trial_process_uses_it(tmp_path, monkeypatch):
    space = _space(tmp_path, "")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = calibrate_run(space, run_dir)
    assert [r["runtime"] for r in first] == ["eager"]  # the deploy runtime's, the only one
    monkeypatch.setattr(throughput, "measure_calibration", lambda *a: pytest.fail("measured again"))
    assert calibrate_run(space, run_dir) == first  # a resumed session reuses it
    # A trial process reads the run's rate: a figure is its ratio to the reference times that rate.
    record = {**first[0], "rate": 1.0e9}
    (run_dir / CALIBRATION_FILE).write_text(json.dumps([record]))
    monkeypatch.setattr(throughput, "_CALIBRATIONS", {})
    use_space_deployment(space, "cpu", run_dir)
    model = build_model(default_config("dense_cnn"), 3, 4, 16).eval()
    figure = measure_throughput(model, torch.randn(8, 3, 16, 16))
    assert figure.calibration_rate == 1.0e9 and figure.images_per_s > 1.0e7  # on the run's scale, not its own


def test_a_search_over_its_throughput_floor_trains_nothing(tmp_path, monkeypatch, capsys):
    trials, _ = search_with_throughput(tmp_path, monkeypatch, capsys, floor=1.0e12,
                                       deploy="{runtime: eager, batch_size: 8, threads: 1}")
    assert len(trials) == 2 and not trials["feasible"].any()
    assert (trials["throughput"] > 0).all() and (trials["accuracy"] == 0).all()
