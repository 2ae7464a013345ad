"""The pure parts of benchmarks/bench_reliability.py: the memory slope and the in-short sentence, which must
follow the figures (flip when one crosses its target)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_reliability as R  # noqa: E402


def test_slope_is_least_squares() -> None:
    assert R.slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0]) == 2.0
    assert R.slope([1], [5.0]) == 0.0 and R.slope([2, 2], [1.0, 3.0]) == 0.0
    assert abs(R.slope([0, 1, 2], [0.0, 1.0, 0.5]) - 0.25) < 1e-12


def test_growth_ignores_the_warm_up_half() -> None:
    warm = [(n, 100.0 + 5.0 * n) for n in range(1, 101)]  # steep while warming up
    flat = [(n, 600.0 + 0.1 * n) for n in range(101, 201)]
    assert abs(R.growth_per_trial(warm + flat) - 0.1) < 1e-9
    assert R.growth_per_trial([]) == 0.0


def loop(backend: str, **changes: object) -> dict:
    base = {"backend": backend, "cycles": 10, "cycles_survived": 10, "requested": 12, "complete": 12, "running": 0,
            "twice": [], "mismatched": [], "alive_after_end": 0, "final_status": 0, "lingering_max": 0}
    return {**base, **changes}


def soak(mb: float) -> dict:
    return {"trials": 200, "mb_per_trial": mb}


def case(name: str, ok: bool) -> dict:
    return {"case": name, "ok": ok}


def test_in_short_flips_with_the_figures() -> None:
    good = R.in_short(soak(0.12), [loop("optuna"), loop("ray")], [case("a", True), case("b", True)])
    assert good.startswith("**In short:** Over 200 trials") and "\n" not in good
    assert "0.120 MB per trial after warm-up (within the 0.5 MB target)" in good
    assert "the optuna backend survived 10 of 10 kill -9 cycles and ended with exactly the requested trials" in good
    assert "outlived" not in good and "All 2 hostile or careless inputs got the expected outcome." in good

    ray = loop("ray", twice=[3], lingering_max=1, lingering_names=["raylet"])
    bad = R.in_short(soak(0.9), [loop("optuna"), ray], [case("a", True), case("b", False)])
    assert "0.900 MB per trial after warm-up (over the 0.5 MB target)" in bad
    assert "the ray backend survived 10 of 10 kill -9 cycles and did NOT end clean" in bad
    assert "but 1 of its processes (raylet) outlived a kill by 10 s and had to be stopped" in bad
    assert "1 of 2 hostile or careless inputs got the expected outcome; not: b." in bad


def test_kill_loop_verdict() -> None:
    assert R.kill_loop_ok(loop("optuna"))
    for change in ({"complete": 11}, {"running": 1}, {"twice": [2]}, {"mismatched": [5]}, {"alive_after_end": 1},
                   {"final_status": 1}):
        assert not R.kill_loop_ok(loop("optuna", **change)), change


def test_in_short_names_what_outlived_a_kill_of_the_driver_alone() -> None:
    pid_only = loop("ray", group=False, lingering_max=2, lingering_names=["ray::DashboardAgent", "ray::RuntimeEnvAgent"])
    text = R.in_short(None, [pid_only], [])
    assert text == ("**In short:** The ray backend with the driver's pid alone killed survived 10 of 10 kill -9 cycles and "
                    "ended with exactly the requested trials, none run twice, but 2 of its processes (ray::DashboardAgent, "
                    "ray::RuntimeEnvAgent) outlived a kill by 10 s and had to be stopped.")


def drivers(ok_rounds: int, rounds: int = 10) -> dict:
    return {"requested_rounds": rounds, "trials": 3, "rounds": [{"ok": i < ok_rounds} for i in range(rounds)]}


def test_in_short_names_the_two_drivers_and_the_predict_memory_figures() -> None:
    good = R.in_short(None, [], [case("a", True)], drivers(10), {"images": 4, "side": 10_000, "peak_mb": 772.0})
    assert ("Two drivers started together on one run folder: in 10 of 10 rounds exactly one ran and the other exited 2 "
            "with one line naming it, the run ending with exactly its 3 trials, none run twice") in good
    assert "predict over 4 PNGs of 10000 x 10000 pixels peaked at 772 MB (under the 1 GB target)" in good
    bad = R.in_short(None, [], [], drivers(9), {"images": 4, "side": 10_000, "peak_mb": 1500.0})
    assert "in 9 of 10 rounds" in bad and "peaked at 1500 MB (OVER the 1 GB target)" in bad
    assert R.drivers_ok({**drivers(10), "rounds": [{"ok": True}] * 10}) and not R.drivers_ok(drivers(9))


def test_cases_not_run_here_are_said_so_and_not_counted() -> None:
    skipped = {"case": "a full disk mid-run", "ok": None, "wrote": "no unshare command"}
    text = R.in_short(None, [], [case("a", True), skipped])
    assert "All 1 hostile or careless inputs got the expected outcome." in text
    assert "Not run here: a full disk mid-run (no unshare command)." in text
