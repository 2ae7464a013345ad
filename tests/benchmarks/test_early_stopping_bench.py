"""The early-stopping benchmark's arithmetic and words, without running a search: the hypervolume
curve, the time to a target, the per-seed ratios, the verdict on the 2/3 target, and its spaces."""

from __future__ import annotations

import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_early_stopping as es  # noqa: E402

from search_space.spec import load_space  # noqa: E402


def test_the_curve_is_normalised_and_in_completion_order() -> None:
    rows = [{"accuracy": 0.5, "flops": 1e7, "done_at": 20.0}, {"accuracy": 0.8, "flops": 1.5e7, "done_at": 10.0},
            {"accuracy": float("nan"), "flops": 1e6, "done_at": 5.0}]
    curve = es.hv_curve(rows, 2e7)
    assert [t for t, _ in curve] == [10.0, 20.0]
    assert curve[0][1] == 0.8 * 0.25  # (1 - 1.5e7 / 2e7) of the box at accuracy 0.8
    assert math.isclose(curve[1][1], 0.8 * 0.25 + 0.5 * 0.25)


def test_time_to_reach_and_the_ratios() -> None:
    plain = [(10.0, 0.1), (100.0, 0.4)]
    fast = [(20.0, 0.2), (50.0, 0.45)]
    slow = [(200.0, 0.3)]
    assert es.time_to_reach(fast, 0.4) == 50.0 and es.time_to_reach(slow, 0.4) == math.inf
    summary = es.summarise({"plain": {0: plain}, "moasha": {0: fast}, "asha": {0: slow}})
    assert summary["moasha"]["time_ratio"] == [0.5] and summary["asha"]["time_ratio"] == [math.inf]
    assert summary["plain"]["time_ratio"] == [1.0]


def test_the_verdict_follows_the_figures() -> None:
    assert "meets the 2/3 target" in es.in_short({"moasha": {"time_ratio": [0.5, 0.6]}})
    assert "misses the 2/3 target" in es.in_short({"moasha": {"time_ratio": [0.7, 0.9]}})
    assert "did not reach" in es.in_short({"moasha": {"time_ratio": [0.5, math.inf]}})
    assert "untested" in es.in_short({})


def test_derived_spaces_load_and_differ_only_where_they_should(tmp_path) -> None:
    spaces = {v: load_space(es.derived_space(tmp_path, v, 1, 12, 4)) for v in es.VARIANTS}
    for variant, space in spaces.items():
        assert space.search.trials == 12 and space.seed == 1 and space.search.backend == "ray"
        assert space.search.early_stopping.name == ("none" if variant == "plain" else variant)
        assert max(space.training["epochs"].values_at_bounds()) == 4
    assert spaces["plain"].model == spaces["moasha"].model


def test_the_figure_is_an_svg_with_one_line_per_run(tmp_path) -> None:
    path = tmp_path / "f.svg"
    es.svg({"plain": {0: [(60.0, 0.1)]}, "moasha": {0: [(30.0, 0.1), (90.0, 0.2)], 1: [(45.0, 0.15)]}}, path)
    text = path.read_text()
    assert text.startswith("<svg") and text.count("<polyline") == 3


def test_a_time_budget_reaches_the_space(tmp_path) -> None:
    space = load_space(es.derived_space(tmp_path, "moasha", 0, 48, 4, timeout_s=120.0))
    assert space.search.timeout_s == 120.0 and space.search.trials == 48
