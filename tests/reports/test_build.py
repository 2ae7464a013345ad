"""The HTML report built from fake run directories: sections, edge cases, escaping, bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from plotly.offline import get_plotlyjs

from cellsparse.errors import UserError
from reports.build import build_report, main

from .fake_run import XSS, write_run

SECTIONS = ["summary", "pareto", "hypervolume", "strategies", "parameters", "curves", "looked-at", "pick", "trials"]
REPO = Path(__file__).resolve().parents[2]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def without_plotlyjs(html: str) -> str:
    """The page minus the inlined plotly.js bundle (checked separately)."""
    bundle = get_plotlyjs()
    assert html.count(bundle) == 1, "plotly.js must be inlined exactly once"
    return html.replace(bundle, "")


def test_report_has_every_section_and_opens_offline(demo_run):
    html = read(demo_run / "report.html")
    page = without_plotlyjs(html)
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page
    assert "cdn.plot.ly" not in page and not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert page.count("Plotly.newPlot(") == 6  # front, hypervolume, per strategy, parallel, importance, curves
    assert "Reference point: <b>accuracy = 0, flops = 40M</b>" in page
    assert "derived from the constraints" in page
    assert "data:image/png;base64," in page  # looked-at images
    assert 'id="trials"' in page and "★" in page
    assert page.count(f"cellsparse export {demo_run.resolve()} --trial ") == 3  # absolute: it is pasted from anywhere
    assert "computed with optuna.importance" in page and "study.journal" in page
    assert (demo_run / "trials.parquet").is_file()
    assert len(html.encode()) < 10_000_000


def test_summary_counts_states(demo_run):
    page = without_plotlyjs(read(demo_run / "report.html"))
    for label, count in (("total", 12), ("complete", 10), ("failed", 1), ("pruned", 1), ("infeasible", 2)):
        assert f"<tr><th>{label}</th><td>{count}</td></tr>" in page
    assert "5.0.0" in page and "ci-runner" in page  # versions and machine from run.json


def test_pick_box_commands_point_at_the_run(demo_run, monkeypatch, tmp_path):
    monkeypatch.chdir(demo_run.parent)
    out = build_report(demo_run, tmp_path / "again.html")
    page = read(out)
    numbers = re.findall(rf"cellsparse export {re.escape(str(demo_run.resolve()))} --trial (\d+)", page)
    assert len(numbers) == 3
    trials = pd.read_csv(demo_run / "trials.csv")
    chosen = trials[trials["number"].isin([int(n) for n in numbers])]
    assert (chosen["state"] == "COMPLETE").all() and (chosen["feasible"].astype(str).str.lower() == "true").all()


def test_trials_table_lists_pareto_trials_first(demo_run):
    page = read(demo_run / "report.html")
    body = page[page.index('<table class="sortable" id="trials">'):]
    rows = re.findall(r"<tr class=\"(front|)\">", body)
    assert len(rows) == 12
    assert rows == sorted(rows, key=lambda r: r != "front") and rows[0] == "front"


@pytest.mark.parametrize("n_complete, message", [(0, "No trial has completed"), (1, "Only one trial has completed")])
def test_runs_with_zero_or_one_complete_trial_still_report(tmp_path, n_complete, message):
    run_dir = write_run(tmp_path, "few", n_trials=4, n_complete=n_complete, journal=False)
    page = read(build_report(run_dir))
    assert message in page
    assert "parameter importance needs at least 2" in page
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page


def test_three_objectives_get_pairwise_panels_and_importance_without_a_journal(tmp_path):
    run_dir = write_run(tmp_path, "three", n_trials=12, objectives=("accuracy", "flops", "latency_ms"),
                        reference_point={"latency_ms": 10.0}, journal=False)
    page = read(build_report(run_dir))
    assert "Three or more objectives" in page
    assert "latency_ms = 10" in page and "accuracy = 0" in page
    assert "from trials.csv" in page


def test_without_a_reference_point_the_report_says_why(tmp_path):
    run_dir = write_run(tmp_path, "noref", objectives=("accuracy", "params"))
    page = read(build_report(run_dir))
    assert "Hypervolume cannot be computed" in page and "params" in page


def test_nothing_from_the_run_reaches_the_page_unescaped(hostile_run):
    html = read(hostile_run / "report.html")
    page = without_plotlyjs(html)
    assert XSS not in html
    # Inside <script> the JSON spells < as \u003c: decoded, it must still be escaped text, not a tag.
    assert "\\u003cscript\\u003ealert" not in page
    assert page.lower().count("<script") == 8  # plotly.js, six figures, the page's own script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text (name, class, error, machine)
    assert "\\u0026lt;script\\u0026gt;alert(1)" in page  # shown in hover texts / ticks, as text


def test_out_writes_elsewhere_and_leaves_the_run_alone(demo_run, tmp_path):
    before = sorted(p.name for p in demo_run.iterdir())
    out = tmp_path / "elsewhere" / "r.html"
    assert build_report(demo_run, out) == out
    assert out.is_file() and (out.parent / "trials.csv").is_file() and (out.parent / "trials.parquet").is_file()
    assert sorted(p.name for p in demo_run.iterdir()) == before
    parquet = pd.read_parquet(out.parent / "trials.parquet")
    assert len(parquet) == 12 and "config.k_rule" in parquet.columns


@pytest.mark.parametrize("damage", ["missing_folder", "no_space", "no_trials", "bad_yaml", "no_objectives"])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, capsys, damage):
    run_dir = write_run(tmp_path, "bad", n_trials=3, journal=False)
    if damage == "missing_folder":
        shutil.rmtree(run_dir)
    elif damage == "no_space":
        (run_dir / "space.yaml").unlink()
    elif damage == "no_trials":
        (run_dir / "trials.csv").unlink()
    elif damage == "bad_yaml":
        (run_dir / "space.yaml").write_text("name: [unclosed\n")
    else:
        space = yaml.safe_load((run_dir / "space.yaml").read_text())
        space["objectives"] = {"accuracy": "maximise"}
        (run_dir / "space.yaml").write_text(yaml.safe_dump(space))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(run_dir) in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    with pytest.raises(UserError):
        build_report(run_dir)


def test_out_below_a_file_is_one_error_line_exit_2(tmp_path, capsys):
    run_dir = write_run(tmp_path, "blocked", n_trials=3, journal=False)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    assert main([str(run_dir), "--out", str(blocker / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "notes.txt is a file" in err[0]
    assert blocker.read_text() == "mine" and not (run_dir / "report.html").exists()


def test_command_line(tmp_path):
    run_dir = write_run(tmp_path, "cli", n_trials=3, journal=False)
    ok = subprocess.run([sys.executable, "-m", "reports.build", str(run_dir), "--out", str(tmp_path / "x.html")],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "x.html").is_file() and not (run_dir / "report.html").exists()
    assert ok.stdout.strip() == f"report written to {tmp_path / 'x.html'}"


def test_building_a_report_imports_neither_torch_nor_ray(tmp_path):
    run_dir = write_run(tmp_path, "light", n_trials=4, n_complete=0, journal=False)
    code = ("import sys; from reports.build import main; rc = main([sys.argv[1]]); "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_parallel_coordinates_keep_the_most_important_keys(demo_run):
    from cellsparse.rundir import read_run
    from reports.figures import parallel_figure

    run = read_run(demo_run)
    fig, conditional, left_out = parallel_figure(run, ranking=["k_rule", "lr"], max_config_axes=2)
    labels = [d.label for d in fig.data[0].dimensions]
    assert labels == ["strategy", "lr", "k_rule", "accuracy", "flops"]  # table order among the kept keys
    assert "k_rule" in conditional and "lr" not in conditional
    assert "embed_dim" in left_out and "k_rule" not in left_out


def test_importance_leaves_out_over_budget_trials_from_the_journal(tmp_path, monkeypatch):
    # Trials 5 and 10 are over the budget: COMPLETE in the journal, but never trained.
    import optuna

    from cellsparse.rundir import read_run
    from reports.importance import param_importances

    run = read_run(write_run(tmp_path, "budget"))
    seen: list[int] = []
    real = optuna.importance.get_param_importances

    def spy(study, **kwargs):
        seen.append(len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))))
        return real(study, **kwargs)

    monkeypatch.setattr(optuna.importance, "get_param_importances", spy)
    result, note = param_importances(run)
    assert "study.journal" in note and result
    assert seen and set(seen) == {int(run.eligible().sum())} == {8}


def test_parallel_coordinates_leave_out_over_budget_trials(demo_run):
    # Over-budget trials (5 and 10) were never trained: their accuracy 0 is not a measurement.
    from cellsparse.rundir import read_run
    from reports.figures import parallel_figure

    run = read_run(demo_run)
    fig, _, _ = parallel_figure(run)
    dims = {d.label: d for d in fig.data[0].dimensions}
    assert len(dims["accuracy"].values) == int(run.eligible().sum()) == 8
    assert max(dims["flops"].values) <= 4.0e7


@pytest.mark.parametrize("victim", ["image", "run_trials"])
def test_out_never_replaces_a_file_it_did_not_write(demo_run, tmp_path, victim):
    target = tmp_path / "cell.png" if victim == "image" else demo_run / "trials.csv"
    if victim == "image":
        target.write_bytes(b"\x89PNG\r\n\x1a\n not html")
    before = target.read_bytes()
    with pytest.raises(UserError, match="is not a report written by"):
        build_report(demo_run, target)
    assert target.read_bytes() == before


def test_out_leaves_someone_elses_trials_table_alone(demo_run, tmp_path):
    theirs = tmp_path / "trials.csv"
    theirs.write_text("mine,not yours\n")
    with pytest.raises(UserError, match="already there"):
        build_report(demo_run, tmp_path / "r.html")
    assert theirs.read_text() == "mine,not yours\n" and not (tmp_path / "r.html").exists()


def test_out_replaces_its_own_report_and_copies(demo_run, tmp_path):
    out = tmp_path / "r.html"
    build_report(demo_run, out)
    (tmp_path / "trials.csv").write_text("stale copy\n")
    assert build_report(demo_run, out) == out  # the report and the copies beside it are its own
    assert (tmp_path / "trials.csv").read_bytes() == (demo_run / "trials.csv").read_bytes()
