"""Progress while trials run: elapsed times and ETAs per trial and for the search, the modes, and
the lines both backends print through the search driver."""

from __future__ import annotations

import io
import re

import pytest

from runner.engine.progress import Progress, clock_text, resolve_mode
from runner.search import main
from tests.runner.search_fixtures import set_env, write_space


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_elapsed_and_eta_per_trial_and_for_the_search() -> None:
    clock, lines = Clock(), []
    progress = Progress(trials=4, mode="epochs", emit=lines.append, clock=clock)
    progress.started(0, 10, "dense_cnn")
    assert lines[-1] == "  trial 0 started (dense_cnn): 10 epochs  | search 0:00 elapsed, ETA ?"
    clock.now = 30.0
    progress.epoch(0, {"epoch": 2, "val_accuracy": 0.5, "train_loss": 1.25})
    # 2 of 10 epochs in 30 s: 2:00 more for the trial; the search is 1/20 done after 30 s: 9:30 more
    assert lines[-1] == ("  trial 0 epoch 2/10  val_acc 0.5000  loss 1.2500  0:30 elapsed, ETA 2:00  "
                         "| search 0:30 elapsed, ETA 9:30")
    assert progress.search_eta() == pytest.approx(570.0)
    clock.now = 150.0
    assert progress.finished(0) == "(2:30; search 2:30 elapsed, ETA 7:30)"  # 1 of 4 trials in 150 s
    assert progress.done_fraction() == 0.25


def test_two_trials_at_once_count_their_epochs() -> None:
    clock = Clock()
    progress = Progress(trials=2, mode="trials", emit=lambda line: pytest.fail(line), clock=clock)
    progress.started(0, 4)
    progress.started(1, 4)
    clock.now = 60.0
    progress.epoch(0, {"epoch": 2})
    progress.epoch(1, {"epoch": 2})  # "trials" mode: no epoch lines, but the ETA counts them
    assert progress.done_fraction() == 0.5 and progress.search_eta() == pytest.approx(60.0)


def test_clock_text_and_modes() -> None:
    assert [clock_text(s) for s in (0, 59.4, 61, 3600, 3725, None)] == ["0:00", "0:59", "1:01", "1:00:00", "1:02:05", "?"]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_mode("auto", Tty()) == "epochs" and resolve_mode("auto", io.StringIO()) == "trials"
    assert resolve_mode("none", Tty()) == "none"
    with pytest.raises(ValueError, match="progress must be one of"):
        resolve_mode("bar")


def test_the_search_prints_epoch_lines_when_asked_and_trial_lines_in_a_pipe(tmp_path, monkeypatch, capsys) -> None:
    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, trials=2, epochs=2)
    assert main(["--space", str(space), "--out", "a", "--progress", "epochs"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^  trial \d started \(probe_net\): 2 epochs  \| search ", out, re.M)) == 2
    epochs = re.findall(r"^  trial (\d) epoch (\d)/2  val_acc [\d.]+  loss [\d.]+  \d+:\d\d elapsed, ETA \d+:\d\d  "
                        r"\| search \d+:\d\d elapsed, ETA \d+:\d\d$", out, re.M)
    assert epochs == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    assert re.search(r"^\[2/2\] trial 1 .* front=\d  \(\d+:\d\d; search \d+:\d\d elapsed, ETA 0:00\)$", out, re.M)
    assert main(["--space", str(space), "--out", "b"]) == 0  # auto, and pytest's capture is not a terminal
    out = capsys.readouterr().out
    assert "epoch 1/2" not in out and "started" not in out and "[2/2] trial 1" in out
    assert main(["--space", str(space), "--out", "c", "--quiet", "--progress", "epochs"]) == 2
    assert "--quiet and --progress epochs cannot be combined" in capsys.readouterr().err


EPOCH_LINE = (r"  trial \d+ epoch \d+/\d+  val_acc [\d.]+  loss [\d.]+  \d+:\d\d elapsed, ETA \d+:\d\d  "
              r"\| search \d+:\d\d elapsed, ETA (\d+:\d\d|\?)")
TRIAL_LINE = r"\[\d+/\d+\] trial \d+ +\w+ +\w+ +.*  front=\d+  \(\d+:\d\d; search \d+:\d\d elapsed, ETA (\d+:\d\d|\?)\)"


def test_the_readme_transcript_has_the_lines_a_search_prints() -> None:
    from tests.runner.test_api import readme_block

    lines = readme_block("search-transcript").splitlines()
    assert lines[0].startswith("$ cellsparse search search_space/cells.yaml")
    epochs = [line for line in lines if " epoch " in line]
    trials = [line for line in lines if line.startswith("[")]
    assert epochs and all(re.fullmatch(EPOCH_LINE, line) for line in epochs), epochs
    assert trials and all(re.fullmatch(TRIAL_LINE, line) for line in trials), trials
    assert any(line.startswith("export a model: cellsparse export runs/cells") for line in lines)
