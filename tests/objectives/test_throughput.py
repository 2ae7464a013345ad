"""The throughput objective: its calibration arithmetic, the interleaved timing, and the measure on a model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cellsparse.objective_info import constraint_keys, objective_extras, objective_info
from objectives import Deployment, deployed, get_objective, measure_objective, measure_throughput
from objectives import throughput as T
from search_space.build import build_model, default_config


def test_calibration_divides_out_load_that_slows_both():
    calm = T.calibrated([200.0, 200.0, 200.0], [100.0, 100.0, 100.0], calibration_rate=100.0)
    busy = T.calibrated([100.0, 50.0, 200.0], [50.0, 25.0, 100.0], calibration_rate=100.0)  # half, quarter, calm
    assert calm.images_per_s == pytest.approx(200.0) and busy.images_per_s == pytest.approx(200.0)
    assert busy.spread == pytest.approx(0.0)  # the ratio did not move
    assert busy.raw_images_per_s == pytest.approx(100.0)  # what a plain timer says
    assert busy.reference_images_per_s == pytest.approx(50.0) and busy.calibration_rate == 100.0


def test_calibration_scales_the_median_ratio_and_reports_its_spread():
    out = T.calibrated([100.0, 300.0, 200.0, 400.0], [100.0, 100.0, 100.0, 100.0], calibration_rate=50.0)
    figures = np.array([50.0, 150.0, 100.0, 200.0])
    assert out.images_per_s == pytest.approx(np.median(figures))
    assert out.spread == pytest.approx(np.percentile(figures, 75) - np.percentile(figures, 25))
    assert out.figures() == {"throughput": out.images_per_s, "throughput_spread": out.spread,
                             "throughput_raw": out.raw_images_per_s}


def test_without_a_reference_the_figure_is_the_raw_median():
    out = T.calibrated([10.0, 30.0, 20.0], None, None)
    assert out.images_per_s == out.raw_images_per_s == 20.0 and out.calibration_rate is None


@pytest.mark.parametrize(("model", "reference", "rate"), [([], None, None), ([1.0, 0.0], None, None),
                                                          ([1.0], [1.0, 2.0], 1.0), ([1.0], [1.0], 0.0)])
def test_bad_rates_are_refused(model, reference, rate):
    with pytest.raises(ValueError):
        T.calibrated(model, reference, rate)


def test_rounds_alternate_order_and_time_each_run(monkeypatch):
    monkeypatch.setattr(T, "CHUNK_S", 1e-6)  # one call per run per round
    calls: list[str] = []

    def sleeper(name: str, seconds: float):
        def run():
            calls.append(name)
            time.sleep(seconds)
        return run

    rates = T.interleaved_rates([sleeper("a", 0.004), sleeper("b", 0.008)], 8, min_rounds=4, max_rounds=4)
    assert rates.shape == (4, 2)
    # a is twice as fast as b: 8 images in 4 ms against 8 ms (sleep only overshoots)
    assert 1.3 < float(np.median(rates[:, 0] / rates[:, 1])) < 2.2
    warm = 2 * T.WARMUP  # each run's warm-up calls, the last one timed to size its chunk
    assert calls[:warm] == ["a"] * T.WARMUP + ["b"] * T.WARMUP
    # rounds alternate (load between them reaches both alike); each timed call follows an untimed one
    # that brings the run back into the caches the other run used
    assert "".join(calls[warm:]) == "aabbbbaaaabbbbaa"


def test_a_run_timed_alone_has_no_untimed_calls_between_rounds(monkeypatch):
    monkeypatch.setattr(T, "CHUNK_S", 1e-6)  # one call per round
    calls: list[str] = []
    rates = T.interleaved_rates([lambda: calls.append("a")], 8, min_rounds=3, max_rounds=3)
    assert rates.shape == (3, 1) and len(calls) == T.WARMUP + 3  # nothing else evicts it from the caches


def test_reference_model_is_fixed():
    a, b = T.reference_model(3), T.reference_model(3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    assert T.reference_model(1)(torch.randn(2, 1, 16, 16)).shape == (2, 5)


def test_deploy_batch_repeats_images_up_to_the_size():
    images = torch.arange(3.0).view(3, 1, 1, 1)
    assert T.deploy_batch(images, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert T.deploy_batch(images, None) is not None and T.deploy_batch(images, 2).shape[0] == 2
    with pytest.raises(ValueError, match="batch of images"):
        T.deploy_batch(torch.empty(0, 1, 4, 4), 4)


def test_objective_is_declared_with_its_constraint_and_extras():
    info = objective_info("throughput")
    assert info.direction == "maximize" and info.unit == "images/s" and info.bounded
    assert info.constraint_key == "min_throughput" and constraint_keys()["min_throughput"] == "throughput"
    assert objective_info("flops").constraint_key == "max_flops"
    assert info.excess(80.0, 100.0) == 20.0 and info.excess(120.0, 100.0) == -20.0  # <= 0 feasible
    assert objective_info("flops").excess(3.0, 5.0) == -2.0
    assert objective_extras(["accuracy", "throughput"]) == ["throughput_spread", "throughput_raw"]
    assert get_objective("throughput").extras == ("throughput_spread", "throughput_raw")


def test_objective_on_a_small_model_restores_threads_and_modes():
    model = build_model(default_config("dense_cnn"), 3, 4, 16).train()
    images = torch.randn(4, 3, 16, 16)
    threads = torch.get_num_threads()
    with deployed(Deployment(batch_size=8, threads=1)):
        figures = measure_objective("throughput", model, images)
    assert set(figures) == {"throughput", "throughput_spread", "throughput_raw"}
    assert figures["throughput"] > 0 and figures["throughput_raw"] > 0 and figures["throughput_spread"] >= 0
    assert model.training and torch.get_num_threads() == threads


def test_a_heavier_model_measures_slower():
    light = build_model({**default_config("dense_cnn"), "width": 8, "stages": 2}, 3, 4, 32)
    heavy = build_model({**default_config("dense_cnn"), "width": 48, "stages": 4, "stem_stride": 1}, 3, 4, 32)
    images = torch.randn(8, 3, 32, 32)
    deployment = Deployment(batch_size=16, threads=1)
    assert measure_throughput(light, images, deployment).images_per_s > 2 * measure_throughput(
        heavy, images, deployment).images_per_s


def test_uncalibrated_deployment_reports_the_raw_figure():
    model = build_model(default_config("dense_cnn"), 3, 4, 16)
    out = measure_throughput(model, torch.randn(4, 3, 16, 16), Deployment(batch_size=4, threads=1, calibrate=False))
    assert out.images_per_s == out.raw_images_per_s and out.calibration_rate is None


def test_cpu_measurements_warm_the_allocator_first(monkeypatch):
    """A figure must not depend on what ran before in the process (glibc's mmap threshold rises
    only once a large block is freed): every CPU measurement, the calibration too, frees one first."""
    order: list[str] = []
    monkeypatch.setattr(T, "warm_allocator", lambda: order.append("warm"))
    monkeypatch.setattr(T, "interleaved_rates",
                        lambda runs, batch_size, **_: order.append("time") or np.ones((5, len(runs))))
    model = build_model(default_config("dense_cnn"), 3, 4, 16)
    measure_throughput(model, torch.randn(4, 3, 16, 16), Deployment(batch_size=4, threads=1, calibrate=False))
    T.measure_calibration(Deployment(batch_size=4, threads=1), (4, 3, 16, 16))
    assert order == ["warm", "time", "warm", "time"]


def test_warm_allocator_frees_what_it_takes():
    T.warm_allocator()  # a block the size glibc's threshold adapts to, never touched: nothing is left held
    assert T.GLIBC_MMAP_THRESHOLD_MAX == 32 << 20
