"""The report in headless Chromium: every plot drawn, no console errors, no dialogs, no network,
sortable table; a full-page screenshot is saved under test-artifacts/ for people to look at."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cdp import Browser, find_chromium

pytestmark = pytest.mark.browser

CHROMIUM = find_chromium()
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

PLOTS_JS = """
Array.from(document.querySelectorAll('div.plot')).map(function (div) {
  var svg = div.querySelector('svg.main-svg'), box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  var marks = div.querySelectorAll('.scatterlayer .trace path, .barlayer .point, .parcoords .axis').length;
  var canvases = Array.from(div.querySelectorAll('canvas')).filter(function (c) { return c.width > 0; }).length;
  return {id: div.id, svg: !!svg, width: box.width, height: box.height, marks: marks, canvases: canvases,
          traces: div.data ? div.data.length : 0};
})
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with Browser(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def demo_page(browser: Browser, demo_run: Path) -> Browser:
    """The browser with the demo report loaded and drawn (once for the tests that only read it)."""
    browser.open((demo_run / "report.html").as_uri())
    wait_for_plots(browser)
    return browser


def wait_for_plots(browser: Browser, timeout: float = 30.0) -> list[dict]:
    """Plot states once every plot has its SVG (plotly draws asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        plots = browser.evaluate(PLOTS_JS)
        if (plots and all(p["svg"] for p in plots)) or time.monotonic() > deadline:
            return plots
        time.sleep(0.25)


def test_every_plot_renders_without_errors_or_network(demo_page):
    browser = demo_page
    plots = wait_for_plots(browser)
    assert len(plots) == 6
    for plot in plots:
        assert plot["svg"] and plot["width"] > 100 and plot["height"] > 100, plot
        assert plot["traces"] > 0 and (plot["marks"] > 0 or plot["canvases"] > 0), plot
    assert browser.errors() == []
    assert browser.dialogs() == []
    remote = [u for u in browser.requests() if not u.startswith(("file:", "data:"))]
    assert remote == [], "the report must open offline"
    images = browser.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
    assert images > 0
    browser.screenshot(ARTIFACTS / "report.png")
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_trials_table_sorts_on_click(demo_page):
    browser = demo_page
    numbers = "Array.from(document.querySelectorAll('#trials tbody tr')).map(r => Number(r.cells[1].textContent))"
    header = "document.querySelectorAll('#trials thead th')[1]"
    browser.evaluate(header + ".click()")
    ascending = browser.evaluate(numbers)
    assert ascending == sorted(ascending) and len(ascending) == 12
    browser.evaluate(header + ".click()")
    assert browser.evaluate(numbers) == sorted(ascending, reverse=True)
    assert browser.errors() == []


def test_hostile_values_run_no_script(browser, hostile_run):
    browser.open((hostile_run / "report.html").as_uri())
    plots = wait_for_plots(browser)
    assert plots and all(p["svg"] for p in plots)
    # Hover a span_pyramid trial (its k_rule is the script tag): the label shows the tag as text.
    browser.evaluate("Plotly.Fx.hover('plot-1', [{curveNumber: 2, pointNumber: 0}]); true")
    time.sleep(0.5)
    label = browser.evaluate("document.querySelector('#plot-1 .hoverlayer').textContent")
    assert "k_rule = <script>alert(1)</script>" in label
    assert browser.evaluate("document.querySelectorAll('.hoverlayer script, .hoverlayer img').length") == 0
    assert browser.dialogs() == []
    assert browser.errors() == []
    assert "<script>alert(1)</script>" in browser.evaluate("document.title")  # shown as text, not run


FRONT_JS = """
(function () {
  var div = document.getElementById('plot-1');
  var drawn = Array.from(div.querySelectorAll('.scatterlayer .trace')).map(function (g) {
    return g.querySelectorAll('path.point').length;
  });
  return {
    traces: div.data.map(function (t) { return {name: t.name, x: t.x, y: t.y}; }),
    drawn: drawn,
    annotations: Array.from(div.querySelectorAll('.annotation-text')).map(function (a) { return a.textContent; }),
    xrange: div.layout.xaxis.range, xtype: div.layout.xaxis.type,
    hv: (document.getElementById('hv-normalised') || {}).textContent
  };
})()
"""


def test_the_front_marks_the_knee_and_the_normalised_hypervolume_is_the_benchmarks(demo_page, demo_run):
    """The knee (and the budget pick) drawn as stars on the front and named beside them; the x axis fits
    the trials, not the budget line; the hypervolume shown is cellsparse.pareto.normalized_hypervolume,
    the function docs/benchmarks.md's figures come from, with the reference point stated."""
    import math

    import numpy as np

    from cellsparse.objective_info import ideal_point
    from cellsparse.pareto import normalized_hypervolume
    from cellsparse.rundir import read_run
    from reports.picks import pick_trial

    browser = demo_page
    run = read_run(demo_run)
    knee = pick_trial(run.trials, run.directions, "knee")
    front = browser.evaluate(FRONT_JS)
    names = [t["name"] for t in front["traces"]]
    index = names.index(f"knee of the front: trial {knee}")
    row = run.trials[run.trials["number"] == knee].iloc[0]
    assert front["traces"][index]["x"] == [row["flops"]] and front["traces"][index]["y"] == [row["accuracy"]]
    assert front["drawn"][index] == 1  # the star is on the page, not only in the data
    assert f"knee: trial {knee}" in front["annotations"]
    assert any(n.startswith("most accurate within the budget: trial ") for n in names)
    complete = run.trials[run.trials["state"] == "COMPLETE"]
    lo, hi = math.log10(complete["flops"].min()), math.log10(complete["flops"].max())
    assert front["xtype"] == "log" and front["xrange"][0] <= lo and front["xrange"][1] >= hi
    assert front["xrange"][1] - front["xrange"][0] < 1.3 * (hi - lo) + 0.01  # fits the points, with a margin

    point, _ = run.space.reference_point()
    ok = run.eligible().to_numpy()
    values = run.trials.loc[ok, list(run.directions)].to_numpy(float)
    want = normalized_hypervolume(values, list(run.directions.values()), [point[n] for n in run.directions],
                                  ideal_point(list(run.directions)))
    assert 0 < want < 1 and front["hv"] == f"{want:.4f}"
    text = browser.evaluate("document.getElementById('hypervolume').textContent")
    assert "Reference point: accuracy = 0, flops = 40M" in text and "ideal point (accuracy = 1, flops = 0)" in text
    assert np.isfinite(want)


def test_epoch_and_trial_axes_tick_whole_numbers(demo_page):
    browser = demo_page
    ticks = browser.evaluate("""
      ['plot-2', 'plot-6'].map(function (id) {
        return Array.from(document.getElementById(id).querySelectorAll('.xtick text')).map(function (t) {
          return t.textContent; });
      })""")
    for labels in ticks:
        assert labels and all(label.replace("\u2212", "-").lstrip("-").isdigit() for label in labels), labels


THREE_JS = """
(function () {
  var plots = Array.from(document.querySelectorAll('div.plot'));
  function stars(div) {  // knee stars drawn, per trace named as the knee
    return Array.from(div.querySelectorAll('.scatterlayer .trace')).filter(function (g, i) {
      return (div.data[i] && /^knee of the front/.test(div.data[i].name));
    }).map(function (g) { return g.querySelectorAll('path.point').length; });
  }
  var pairs = document.getElementById('pareto-pairs').nextElementSibling.nextElementSibling;
  var lines = document.getElementById('pareto-lines').nextElementSibling.nextElementSibling;
  return {
    plots: plots.length,
    pairStars: stars(pairs),
    lineAxes: Array.from(lines.querySelectorAll('.parcoords .y-axis .axis-title')).map(function (t) { return t.textContent; }),
    lineCanvases: Array.from(lines.querySelectorAll('canvas')).filter(function (c) { return c.width > 0; }).length
  };
})()
"""


@pytest.mark.parametrize("which", ["three_run", "searched_three_run"])
def test_three_objective_views_render(browser, request, which):
    """A run of three objectives (accuracy, FLOPs and params made up; accuracy, FLOPs and throughput from
    a real search): every plot drawn, the knee
    starred in each of the three pairwise panels, the objectives' parallel coordinates drawn with an
    axis per objective and its direction, no console errors."""
    run_dir = request.getfixturevalue(which)
    browser.open((run_dir / "report.html").as_uri())
    plots = wait_for_plots(browser)
    assert len(plots) == 8
    for plot in plots:
        assert plot["svg"] and plot["width"] > 100 and plot["height"] > 100, plot
        assert plot["traces"] > 0 and (plot["marks"] > 0 or plot["canvases"] > 0), plot
    views = browser.evaluate(THREE_JS)
    assert views["pairStars"] == [1, 1, 1], views
    assert views["lineCanvases"] > 0, views
    axes = views["lineAxes"]
    assert axes[0] == "strategy" and len(axes) == 4, axes
    assert "maximised; best at top" in axes[1] and "minimised, log; best at top" in axes[2], axes
    third = "minimised, log; best at top" if which == "three_run" else "maximised, log; best at top"  # params | throughput
    assert third in axes[3], axes
    assert browser.errors() == []
    assert browser.dialogs() == []
    if which == "three_run":
        browser.screenshot(ARTIFACTS / "report-three-objectives.png")
