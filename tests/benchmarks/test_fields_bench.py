"""The field benchmarks' arithmetic: equal-FLOPs interpolation, the goal's verdict, the regime's gaps,
adaptive k's paired intervals, resuming from saved runs, and the designs' field-scale sizing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _fields  # noqa: E402
import bench_adaptive_k_fields as adaptive  # noqa: E402
import bench_fields_goal as goal  # noqa: E402
import bench_regime as regime  # noqa: E402

from objectives.flops import count_flops  # noqa: E402
from search_space import build_model  # noqa: E402


def run(label: str, test: float, flops: float, seed: int = 0, *, strategy: str = "dense_cnn", inside: float | None = None,
        random: float | None = None, tag: str = "", set_name: str = "s") -> dict:
    return {"key": f"{set_name}/{label}/{tag}/{seed}", "set": set_name, "label": label, "tag": tag, "strategy": strategy,
            "seed": seed, "flops": flops, "val": test, "test": test, "k_final": None, "tail": [test, test, test],
            "inside": inside, "random": random, "seconds": 1.0}


DENSE = [run("dense shrink 4x", 0.40, 1e6), run("dense shrink 2x", 0.60, 4e6), run("dense native", 0.80, 16e6)]


def test_dense_accuracy_at_a_cost_is_interpolated_in_log_flops() -> None:
    by = _fields.by_label(DENSE)
    assert _fields.shrink_at(by, 2e6)[0] == pytest.approx(50.0)  # half-way between 1 and 4 MFLOPs in log
    assert _fields.shrink_at(by, 8e6)[0] == pytest.approx(70.0)
    acc, where = _fields.shrink_at(by, 0.5e6)  # cheaper than every dense size: held to the cheapest
    assert acc == pytest.approx(40.0) and "costs 2.0x more" in where
    assert _fields.shrink_at(by, 32e6)[0] == pytest.approx(80.0)
    assert math.isnan(_fields.shrink_at({}, 1e6)[0])


def test_the_goal_needs_every_part() -> None:
    sparse = run("tnet_traversal", 0.795, 2e6, strategy="tnet_traversal")
    by = _fields.by_label([*DENSE, sparse])
    fast = {"dense native": 100.0, "tnet_traversal": 250.0}
    assert ": meets the goal" in goal.goal_verdict("tnet_traversal", by, "dense native", fast)
    slow = {"dense native": 100.0, "tnet_traversal": 150.0}
    assert ": misses the goal" in goal.goal_verdict("tnet_traversal", by, "dense native", slow)
    costly = _fields.by_label([*DENSE, run("tnet_traversal", 0.795, 5e6, strategy="tnet_traversal")])
    verdict = goal.goal_verdict("tnet_traversal", costly, "dense native", fast)
    assert ": misses the goal" in verdict and "at 31% of its FLOPs (> 25%)" in verdict
    weak = _fields.by_label([*DENSE, run("tnet_traversal", 0.52, 2e6, strategy="tnet_traversal")])
    assert "+2.0 points against the dense CNN at its FLOPs" in goal.goal_verdict("tnet_traversal", weak, "dense native", fast)


def test_the_regime_gap_is_per_seed_against_the_dense_cnn_at_equal_flops() -> None:
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.02), (2, -0.02)):
        runs += [run(r["label"], r["test"] + shift, r["flops"], seed) for r in DENSE]
        runs.append(run("span_pyramid", 0.55 + shift, 2e6, seed, strategy="span_pyramid", inside=0.1, random=0.02))
    point = regime.gaps(runs)["span_pyramid"][0]
    assert point["gap"] == pytest.approx(5.0) and point["half"] == pytest.approx(0.0, abs=1e-9)
    assert point["share"] == pytest.approx(0.02) and point["selection"] == pytest.approx(5.0)


def test_adaptive_k_pairs_each_seed_with_its_own_control() -> None:
    runs = []
    for seed, (fixed, trend) in enumerate([(0.50, 0.49), (0.60, 0.61), (0.55, 0.55)]):
        runs.append({**run("span_pyramid", fixed, 10e6, seed, tag="fixed")})
        runs.append({**run("span_pyramid", trend, 6e6, seed, tag="loss_trend")})
    p = adaptive.paired(runs, "fixed")
    assert p["seeds"] == 3 and p["acc"][0] == pytest.approx(0.0, abs=1e-9) and p["saved"][0] == pytest.approx(40.0)
    assert p["acc"][1] == pytest.approx(4.30 * 1.0 / math.sqrt(3), rel=1e-3)  # t(0.975, 2) * sd / sqrt(n), sd = 1 point
    assert adaptive.paired(runs, "schedule")["seeds"] == 0


def test_saved_runs_are_not_trained_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fields = _fields.FieldSet(size=64, target=16, train=8, val=4, test=4)
    design = _fields.Design("dense native", {"strategy": "dense_cnn"})
    tasks = [_fields.Task(fields, design, seed, 1) for seed in (0, 1)]
    saved = [{**run("dense native", 0.5, 1e6), "key": tasks[0].key()}, {**run("other", 0.1, 1e6), "key": "elsewhere"}]
    trained = []

    class Pool:  # the one unsaved task runs in this process; nothing is spawned
        def __init__(self, *args: object, **kwargs: object) -> None: ...
        def __enter__(self) -> Pool:
            return self
        def __exit__(self, *exc: object) -> None: ...
        def submit(self, fn, task, threads):  # noqa: ANN001, ANN202
            trained.append(task)
            from concurrent.futures import Future

            future: Future = Future()
            future.set_result({**run("dense native", 0.6, 1e6, task.seed), "key": task.key()})
            return future

    monkeypatch.setattr(_fields, "ProcessPoolExecutor", Pool)
    out = tmp_path / "runs.json"
    results = _fields.run_tasks(tasks, jobs=1, threads=1, saved=saved, save=lambda runs: _fields.save_json(out, runs))
    assert trained == [tasks[1]]
    assert sorted(r["key"] for r in results) == sorted(t.key() for t in tasks)  # not the other invocation's run
    assert len(json.loads(out.read_text())) == 3 and not out.with_suffix(".json.tmp").exists()


def test_headroom_runs_of_other_data_are_refused(tmp_path: Path) -> None:
    saved = {"settings": {"sets": ["fields"], "size": 128, "target": 16, "difficulty": 0.3, "train": 0, "val": 500,
                          "test": 500, "epochs": 15}, "results": []}
    path = tmp_path / "headroom.json"
    path.write_text(json.dumps(saved))
    fields = _fields.FieldSet(size=256, target=32)
    with pytest.raises(SystemExit, match="is not this invocation's"):
        goal.from_headroom(path, [], fields)
    row = {"set": "fields", "variant": "native", "seed": 0, "flops": 1e6, "val": 0.5, "test": 0.4, "tail": [0.5] * 3,
           "seconds": 3.0}
    path.write_text(json.dumps({**saved, "settings": {**saved["settings"], "size": 256, "target": 32}, "results": [row]}))
    task = _fields.Task(fields, _fields.field_designs(256, 32)[0], 0, 15)
    (converted,) = goal.from_headroom(path, [task], fields)
    assert converted["key"] == task.key() and converted["test"] == 0.4 and converted["label"] == "dense native"
    assert goal.from_headroom(path, [_fields.Task(fields, task.design, 0, 12)], fields) == []  # other budget


def test_real_frames_size_the_designs_from_their_boxes(tmp_path: Path) -> None:
    path = tmp_path / "set.npz"
    np.savez(path, train_boxes=np.array([[0, 0, 40, 30], [10, 10, 70, 50], [0, 0, 50, 50]]))
    assert goal._real_target(str(path), 256) == 50
    np.savez(path, train_images=np.zeros((1, 8, 8, 3), np.uint8))
    assert goal._real_target(str(path), 256) == round(0.28 * 256)


@pytest.mark.parametrize(("size", "target"), [(256, 32), (128, 16)])
def test_the_sparse_field_designs_cost_at_most_a_quarter_of_the_native_dense_cnn(size: int, target: int) -> None:
    images = torch.zeros(1, 3, size, size)
    cost = {d.label: count_flops(build_model(d.config, 3, 5, size), images)
            for d in _fields.field_designs(size, target) if not d.crop}
    for label in ("tnet_traversal", "span_pyramid", "sparse_topk"):
        assert cost[label] <= 0.25 * cost["dense native"], (label, cost[label], cost["dense native"])
    tnet = build_model(next(d for d in _fields.field_designs(size, target) if d.label == "tnet_traversal").config, 3, 5, size)
    last_crop = size * tnet.half_sizes[-1]
    assert 0.7 < tnet.base_resolution / last_crop <= 1.0  # the last level reads near-native pixels


def test_adaptive_k_says_when_the_rule_sat_on_its_floor_and_which_seeds_never_learned() -> None:
    runs = []
    for seed, (fixed, trend, k) in enumerate([(0.50, 0.49, 5), (0.19, 0.21, 5), (0.55, 0.56, 9)]):
        runs.append({**run("span_pyramid", fixed, 10e6, seed, tag="fixed"), "k_final": 20})
        runs.append({**run("span_pyramid", trend, 6e6, seed, tag="loss_trend"), "k_final": k,
                     "config": {"k_min_fraction": 0.25}})
    text = adaptive.reading(runs)
    assert "floor (k_min_fraction of the initial k) in 2 of 3 seeds" in text and "1 of 3 seeds stayed" in text
