"""Careless input and a hostile environment, each one line and a non-zero exit, nothing overwritten:
plugins that are not module names or break on import, --dry-run asked for billions of configs, --resume
after the run's own space.yaml was edited, and storage that refuses writes (a full disk mid-trial or
mid-journal, a report or an export into a read-only folder)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from cellsparse.runlock import LOCK_FILE
from tests.runner.search_fixtures import (
    finished_run_in_subprocess,
    journal_trials,
    run_search_cli,
    set_env,
    snapshot,
    write_space,
)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


search = run_search_cli


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-trial run."""
    return finished_run_in_subprocess(tmp_path_factory.mktemp("careless"))[1]


# --------------------------------------------------------------------------------------------- plugins

@pytest.mark.parametrize("plugins, message", [
    ("..evil", "'..evil' is not a module name"),
    ("tests.runner.search_fixtures,a/b", "'a/b' is not a module name"),
    ("broken_plugin_raises", "'broken_plugin_raises' failed while being imported (RuntimeError: half-installed"),
    ("broken_plugin_syntax", "'broken_plugin_syntax' failed while being imported (SyntaxError"),
])
def test_a_bad_or_broken_plugin_is_one_line(tmp_path, capsys, monkeypatch, plugins: str, message: str) -> None:
    (tmp_path / "broken_plugin_raises.py").write_text("raise RuntimeError('half-installed package')\n")
    (tmp_path / "broken_plugin_syntax.py").write_text("def (:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CELLSPARSE_PLUGINS", plugins)
    space = write_space(tmp_path, trials=1)
    status, _, err = search(capsys, "--space", space, "--out", tmp_path / "run")
    line = _one_line(err)
    assert status == 2 and "CELLSPARSE_PLUGINS" in line and message in line
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- --dry-run

def test_dry_run_with_billions_of_trials_prints_a_capped_list_and_says_so(tmp_path, capsys) -> None:
    from runner.search import DRY_RUN_MAX

    space = write_space(tmp_path, trials=1)
    status, out, _ = search(capsys, "--space", space, "--dry-run", "--trials", "99999999999")
    assert status == 0
    assert out.count('"strategy": "probe_net"') == DRY_RUN_MAX
    assert f"of the 99,999,999,999 trials asked for; --dry-run prints at most {DRY_RUN_MAX}" in out
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------- edited space.yaml

def test_resume_after_the_runs_space_yaml_was_edited_is_one_line(tmp_path, capsys, finished) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    text = (run / "space.yaml").read_text()
    assert "flops: minimize" in text
    (run / "space.yaml").write_text(text.replace("flops: minimize", "flops: maximize"))  # a traceback in Optuna before
    before = snapshot(run)
    status, out, err = search(capsys, "--out", run, "--resume", "--trials", "3")
    line = _one_line(err)
    assert status == 2 and "space.yaml was edited after the run started" in line and out == ""
    assert snapshot(run) == before


def test_resume_after_only_a_session_setting_was_edited_goes_on(tmp_path, capsys, finished) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    text = (run / "space.yaml").read_text()
    (run / "space.yaml").write_text(text.replace("trials: 2", "trials: 7"))
    status, _, err = search(capsys, "--out", run, "--resume", "--trials", "2")
    assert status == 0, err


# --------------------------------------------------------------------------------------------- storage refuses writes

def _no_space(path: object = "x") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_mid_trial_stops_the_search_with_one_line_and_resume_finishes(tmp_path, capsys,
                                                                                 monkeypatch) -> None:
    import runner.engine.trial as trial

    real = trial.save_trial
    calls = []

    def full_on_the_second(trial_dir, **kwargs):  # noqa: ANN001, ANN003
        calls.append(trial_dir)
        if len(calls) == 2:
            raise _no_space(Path(trial_dir) / "model.pt")
        return real(trial_dir, **kwargs)

    monkeypatch.setattr(trial, "save_trial", full_on_the_second)
    space = write_space(tmp_path, trials=4)
    run = tmp_path / "run"
    status, out, err = search(capsys, "--space", space, "--out", run)
    line = _one_line(err)
    assert status == 2 and "No space left on device (model.pt)" in line and "stopped after 1 of 4 trials" in line
    assert "--resume" in line and "Traceback" not in out + err
    states = [(t.state.name, "error" in t.user_attrs) for t in journal_trials(run)]
    assert states == [("COMPLETE", False), ("FAIL", False)]  # the cut trial: interrupted, not counted; no more asked
    assert not (run / LOCK_FILE).exists()

    monkeypatch.setattr(trial, "save_trial", real)
    status, out, err = search(capsys, "--out", run, "--resume")
    assert status == 0, err
    assert [t.state.name for t in journal_trials(run)].count("COMPLETE") == 4


def test_a_journal_the_disk_refuses_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from optuna.storages.journal import JournalFileBackend

    real = JournalFileBackend.append_logs
    calls = []

    def append(self, logs):  # noqa: ANN001
        calls.append(len(logs))
        if len(calls) > 12:
            raise _no_space(tmp_path / "run" / "study.journal")
        return real(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", append)
    space = write_space(tmp_path, trials=5)
    status, out, err = search(capsys, "--space", space, "--out", tmp_path / "run")
    line = _one_line(err)
    assert status == 2 and "No space left on device (study.journal)" in line and "--resume" in line
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_trials_csv_the_disk_refuses_stops_the_search(tmp_path, capsys, monkeypatch) -> None:
    import cellsparse.files as files

    real = os.replace
    count = {"trials.csv": 0}

    def replace(src, dst):  # noqa: ANN001
        if Path(dst).name == "trials.csv":
            count["trials.csv"] += 1
            if count["trials.csv"] > 2:
                raise _no_space(dst)
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    space = write_space(tmp_path, trials=5)
    status, out, err = search(capsys, "--space", space, "--out", tmp_path / "run")
    line = _one_line(err)
    assert status == 2 and "No space left on device" in line
    assert "progress update failed" not in err and out.count("COMPLETE") < 5


def test_a_report_into_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch, finished) -> None:
    import reports.build as build

    real = os.replace

    def read_only(src, dst):  # noqa: ANN001
        if Path(dst).parent == tmp_path / "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real(src, dst)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "replace", read_only)
    status = build.main([str(finished), "--out", str(tmp_path / "ro" / "report.html")])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and "report.html: cannot write it (Read-only file system)" in line
    assert list((tmp_path / "ro").iterdir()) == []


def test_an_export_into_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch, finished) -> None:
    import tempfile

    from runner.export import cli

    def refused(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    status = cli.main([str(finished), "--formats", "pt2", "--no-latency", "--out", str(tmp_path / "ro" / "export")])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and "cannot write it (Read-only file system)" in line and "nothing was written" in line
