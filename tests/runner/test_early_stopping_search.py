"""Early stopping through a whole search: pruned trials in the journal, trials.csv and the report,
and a resumed search that judges new trials against the rungs the first session filled."""

from __future__ import annotations

import json

import pytest

from runner.search import main
from tests.runner.search_fixtures import journal_trials, read_trials, set_env, write_space


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def with_early_stopping(space, rule: str = "{name: moasha, grace_epochs: 1, reduction_factor: 2, min_trials: 2}"):
    resources = "  resources: {cpu: 1, gpu: 0}\n"
    text = space.read_text().replace(resources, f"{resources}  early_stopping: {rule}\n")
    assert "early_stopping" in text
    space.write_text(text)
    return space


def test_moasha_prunes_trials_at_their_rung_and_the_run_records_it(tmp_path) -> None:
    space = with_early_stopping(write_space(tmp_path, trials=6, epochs=3))
    assert main(["--space", str(space), "--out", "run"]) == 0
    rows = read_trials(tmp_path / "run")
    states = [r["state"] for r in rows]
    assert "PRUNED" in states and "COMPLETE" in states
    for row in rows:
        history = json.loads((tmp_path / "run" / "trials" / row["number"] / "history.json").read_text())
        if row["state"] == "PRUNED":
            stopped = int(float(row["stopped_at_epoch"]))
            assert stopped in (1, 2) and len(history) == stopped  # the curve ends where it stopped
            assert float(row["accuracy"]) == pytest.approx(history[-1]["val_accuracy"])
            assert not (tmp_path / "run" / "trials" / row["number"] / "model.pt").exists()
        else:
            assert len(history) == 3 and row["stopped_at_epoch"] == ""
    report = (tmp_path / "run" / "report.html").read_text()
    assert "(stopped early)" in report
    trials = journal_trials(tmp_path / "run")
    assert all(t.values is None for t in trials if t.state.name == "PRUNED")  # never on a front

    # a resumed session judges its new trials against the rungs the first one filled
    assert main(["--out", "run", "--resume", "--trials", "9"]) == 0
    rows = read_trials(tmp_path / "run")
    assert len(rows) == 9 and {r["state"] for r in rows} <= {"PRUNED", "COMPLETE"}
    rung_sizes = [sum(f"rung_{e}" in t.user_attrs for t in journal_trials(tmp_path / "run")) for e in (1, 2)]
    assert rung_sizes[0] == 9


def test_without_early_stopping_every_trial_trains_to_the_end(tmp_path) -> None:
    space = write_space(tmp_path, trials=3, epochs=2)
    assert main(["--space", str(space), "--out", "run"]) == 0
    assert [r["state"] for r in read_trials(tmp_path / "run")] == ["COMPLETE"] * 3
    assert "early_stopping" not in (tmp_path / "run" / "space.yaml").read_text()


@pytest.mark.ray
@pytest.mark.parametrize("rule", ["{name: moasha, grace_epochs: 1, reduction_factor: 2, min_trials: 2}",
                                  "{name: asha, grace_epochs: 1, reduction_factor: 2}"])
def test_early_stopping_on_the_ray_backend(tmp_path, rule) -> None:
    """The driver's rule through Tune's TrialScheduler interface, and Tune's own ASHA: trials either
    finish or are PRUNED, none fails, and every finished one trained all its epochs."""
    space = with_early_stopping(write_space(tmp_path, trials=5, epochs=3, backend="ray", max_concurrent=2), rule)
    assert main(["--space", str(space), "--out", "run"]) == 0
    rows = read_trials(tmp_path / "run")
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"} and "COMPLETE" in {r["state"] for r in rows}
    for row in rows:
        history = json.loads((tmp_path / "run" / "trials" / row["number"] / "history.json").read_text())
        assert len(history) == 3 if row["state"] == "COMPLETE" else len(history) < 3
