"""The report's views of three objectives: pairwise panels with the front ringed and the knee starred, the
objectives' parallel coordinates (front and knee highlighted, best at the top of every axis), the
hypervolume over all three; two-objective reports keep their staircase and get none of it."""

from __future__ import annotations

import base64
import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from cellsparse.pareto import hypervolume
from cellsparse.rundir import read_run
from reports import figures as F
from reports.build import build_report
from reports.picks import pick_trial

from .fake_run import XSS, write_run
from .test_build import read, without_plotlyjs

OBJECTIVES = ("accuracy", "flops", "params")


def figures_of(page: str) -> list[dict]:
    """Every figure embedded in a report page, as plotly JSON (the page writes < > & as \\u escapes,
    which JSON reads back)."""
    return [json.loads(m) for m in re.findall(r"var f = (\{.*?\});Plotly\.newPlot", page)]


def array(value) -> np.ndarray:
    """A data array of figure JSON: plotly writes numpy arrays as {"dtype", "bdata"} (base64)."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value)


def knee_and_front(run_dir: Path):
    run = read_run(run_dir)
    pareto = run.pareto()
    return run, pareto, pick_trial(run.trials, run.directions, "knee")


def test_pairwise_panels_ring_the_front_and_star_the_knee(three_run):
    run, pareto, knee = knee_and_front(three_run)
    fig = F.pairwise_figure(run, F.strategy_colours(run.trials["strategy"]), pareto, knee)
    pairs = list(combinations(OBJECTIVES, 2))
    front = run.trials[pareto.to_numpy()]
    row = run.trials[run.trials["number"] == knee].iloc[0]
    star_traces = [t for t in fig.data if t.name == f"knee of the front: trial {knee}"]
    ring_traces = [t for t in fig.data if t.name == "on the Pareto front"]
    assert len(star_traces) == len(ring_traces) == len(pairs) == 3
    layout = fig.layout.to_plotly_json()
    for i, ((a, b), star, ring) in enumerate(zip(pairs, star_traces, ring_traces, strict=True)):
        y, x = (b, a) if b == "accuracy" else (a, b)
        assert list(star.x) == [row[x]] and list(star.y) == [row[y]]
        assert sorted(ring.x) == sorted(front[x]) and sorted(ring.y) == sorted(front[y])
        suffix = "" if i == 0 else str(i + 1)
        assert layout[f"xaxis{suffix}"]["title"]["text"] == F.label(x)
        assert layout[f"xaxis{suffix}"]["type"] == "log"  # FLOPs and params span decades, either way up
        assert layout[f"yaxis{suffix}"]["type"] == ("linear" if y == "accuracy" else "log")
    assert [t.showlegend for t in star_traces] == [True, False, False]  # named once


def test_four_objectives_wrap_three_panels_to_a_row(tmp_path):
    run_dir = write_run(tmp_path, "four", n_trials=12, objectives=(*OBJECTIVES, "latency_ms"), journal=False)
    run, pareto, knee = knee_and_front(run_dir)
    fig = F.pairwise_figure(run, F.strategy_colours(run.trials["strategy"]), pareto, knee)
    domains = {tuple(axis.domain) for axis in (fig.layout[f"yaxis{i or ''}"] for i in range(7)) if axis.domain}
    assert len([t for t in fig.data if t.name == "on the Pareto front"]) == 6
    assert len(domains) == 2  # two rows of three


def test_parallel_coordinates_highlight_the_front_and_the_knee_best_at_the_top(three_run):
    run, pareto, knee = knee_and_front(three_run)
    fig = F.objectives_parallel_figure(run, pareto, knee)
    (trace,) = fig.data
    pool = run.trials[run.eligible().to_numpy()]
    codes = np.asarray(trace.line.color)
    assert len(codes) == len(pool)  # one line per complete, feasible trial
    assert (codes == 2).sum() == 1 and codes[-1] == 2  # the knee, drawn last (on top)
    assert (codes >= 1).sum() == int(pareto.sum())
    assert list(codes) == sorted(codes)  # the grey rest first, then the front, then the knee
    dims = trace.dimensions
    assert [d.label.split("<br>")[0] for d in dims] == ["strategy", *[F.label(o) for o in OBJECTIVES]]
    by_label = {d.label.split("<br>")[0]: d for d in dims}
    accuracy, flops, params = (by_label[F.label(o)] for o in OBJECTIVES)
    assert "maximised" in accuracy.label and accuracy.range[0] < accuracy.range[1]
    for d in (flops, params):  # minimised: the axis runs downward, so the best (smallest) is at the top
        assert "minimised, log" in d.label and d.range[0] > d.range[1]
    knee_row = run.trials[run.trials["number"] == knee].iloc[0]
    assert flops.values[-1] == pytest.approx(np.log10(knee_row["flops"]))
    assert accuracy.values[-1] == pytest.approx(knee_row["accuracy"])
    # tick labels are the values in their own units
    for value, text in zip(flops.tickvals, flops.ticktext, strict=True):
        assert text == F.esc(F.fmt(10 ** value))
    low, high = sorted(flops.range)
    assert all(low - 1e-9 <= v <= high + 1e-9 for v in flops.tickvals) and len(flops.tickvals) >= 3


def test_the_page_shows_the_three_objective_views_and_hypervolume(three_run):
    run, pareto, knee = knee_and_front(three_run)
    page = without_plotlyjs(read(three_run / "report.html"))
    assert '<h3 id="pareto-pairs">' in page and '<h3 id="pareto-lines">' in page
    assert f"the knee of all 3 objectives starred (trial {knee})" in page
    assert "hyperplane through the front's extremes" in page  # the pick box says what the knee is
    assert "The volume is over all 3 objectives" in page
    figures = figures_of(page)
    assert len(figures) == 8  # the two-objective six, plus the pairs and the objectives' lines
    main = figures[0]
    (front,) = [t for t in main["data"] if t.get("name") == "on the Pareto front (all objectives)"]
    assert front["mode"] == "markers"  # no staircase: on one plane a 3-D front is none
    assert any(t.get("type") == "parcoords" and len(t["dimensions"]) == 4 for t in figures[2]["data"])
    point, _ = run.space.reference_point()
    values = run.trials.loc[run.eligible().to_numpy(), list(OBJECTIVES)].to_numpy(float)
    raw = hypervolume(values, [run.directions[o] for o in OBJECTIVES], [point[o] for o in OBJECTIVES])
    shown = re.search(r'id="hv-normalised">([0-9.]+)<', page).group(1)
    assert float(shown) == pytest.approx(raw / (1.0 * 4e7 * 2e6), abs=5e-5)


def test_two_objective_reports_keep_their_views(demo_run):
    page = without_plotlyjs(read(demo_run / "report.html"))
    assert "pareto-pairs" not in page and "pareto-lines" not in page
    assert "line joining the front's extremes, log FLOPs" in page
    (front,) = [t for t in figures_of(page)[0]["data"] if t.get("name") == "Pareto front"]
    assert front["mode"] == "lines+markers" and front["line"]["shape"] == "hv"


def test_three_objective_views_escape_what_the_run_wrote(tmp_path):
    run_dir = write_run(tmp_path, objectives=OBJECTIVES, hostile=True, reference_point={"params": 2e6})
    html = read(build_report(run_dir))
    assert XSS not in html
    assert "\\u003cscript\\u003ealert" not in without_plotlyjs(html)


def test_a_searched_three_objective_run_reports_every_view(searched_three_run):
    """A real search's run directory (not a fake one): the views are there and agree with pick_trial."""
    run, pareto, knee = knee_and_front(searched_three_run)
    assert list(run.objectives) == ["accuracy", "flops", "throughput"] and run.eligible().sum() >= 3
    page = without_plotlyjs(read(searched_three_run / "report.html"))
    figures = figures_of(page)
    pairs = next(f for f in figures if any(t.get("name") == "on the Pareto front" for t in f["data"]))
    stars = [t for t in pairs["data"] if t.get("name") == f"knee of the front: trial {knee}"]
    assert len(stars) == 3
    lines = [t for f in figures for t in f["data"] if t.get("type") == "parcoords" and len(t["dimensions"]) == 4]
    assert len(lines) == 1 and array(lines[0]["line"]["color"])[-1] == 2  # the knee's line, drawn last
    # throughput has no best value to normalise by: the hypervolume is shown raw, and says why
    assert '<b id="hv-normalised">' not in page and "Final hypervolume: <b>" in page and "not normalised" in page


def test_export_picks_the_same_knee_and_names_every_objective(three_run):
    from runner.export.pick import choose_trial

    run, _, knee = knee_and_front(three_run)
    choice = choose_trial(run, trial=None, pick="knee", max_flops=None)
    assert choice.number == knee
    assert "the knee of the front of all 3 objectives (where the trade-off bends most)" in choice.reason
