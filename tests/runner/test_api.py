"""The Python API and the ``cellsparse`` command: README's example, Run, predict on arrays, the CLI,
the end-of-search export line, the missing-ONNX-packages message and what optuna-dashboard sees."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cellsparse.errors import UserError
from runner import cli
from runner import predict as P
from runner.run import Run
from tests.runner.export_fixtures import tiny_export
from tests.runner.search_fixtures import REPO, set_env, write_space

README = REPO / "README.md"

# The README example runs on this tiny space, saved where the example looks (search_space/cells.yaml).
TINY_CELLS = textwrap.dedent("""\
    name: cells
    seed: 0
    data: {source: synthetic, image_size: 16, train: 64, val: 32, test: 32, augment: false}
    objectives: {accuracy: maximize, flops: minimize}
    constraints: {max_flops: 2.0e7}
    training: {epochs: 1, batch_size: 32, lr: {log: [1.0e-3, 1.0e-2]}, warmup_epochs: 0.0}
    search: {trials: 30, sampler: {name: tpe, seed: 0}, backend: ray, max_concurrent: 1}
    space:
      strategy:
        dense_cnn: {width: [4, 8], stages: [1, 2]}
    """)


def readme_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert found, f"README.md has no code block after <!-- {marker} -->"
    return found.group(1)


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export_runs"  # shared with test_predict's tiny exports


def test_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's Python API block, executed as written (fewer trials) in a folder with a tiny cells.yaml."""
    code = readme_block("api-example")
    assert 'cellsparse.search("search_space/cells.yaml", trials=10, backend="optuna", out="runs/x")' in code
    assert "from runner" not in code and "from reports" not in code  # the public API, one import
    code = code.replace("trials=10", "trials=3")  # the same calls, a quicker search
    monkeypatch.chdir(tmp_path)
    (tmp_path / "search_space").mkdir()
    (tmp_path / "search_space" / "cells.yaml").write_text(TINY_CELLS, encoding="utf-8")
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as logged:
        exec(compile(code, "README.md (api-example)", "exec"), namespace)
    run, result = namespace["run"], namespace["result"]
    assert isinstance(run, Run) and len(run.trials) == 3 and set(run.trials["state"]) == {"COMPLETE"}
    assert 1 <= len(run.front) <= 3 and namespace["knee"] in run.front["number"].tolist()
    assert run.report_path == Path("runs/x/report.html") and run.report_path.is_file()
    assert namespace["export_dir"] == Path(f"runs/x/export/trial-{namespace['knee']}")
    card = json.loads((namespace["export_dir"] / "model_card.json").read_text())
    assert card["trial"]["number"] == namespace["knee"] and card["trial"]["picked_by"] == "knee"
    assert len(result.predicted) == 8 and set(result.predicted) <= set(card["classes"])
    assert list(result.frame().columns[:4]) == ["input", "predicted", "probability", "top2"]
    assert result.probabilities.shape == (8, len(card["classes"]))
    assert "report.html" in logged.getvalue()  # the API logs what the command prints (cellsparse.log)
    assert namespace["trial"].number == namespace["knee"] and namespace["trial"].history


def test_run_load_picks_and_bad_picks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    from runner.search import search

    with contextlib.redirect_stderr(io.StringIO()) as logged, contextlib.redirect_stdout(io.StringIO()) as printed:
        run = search(write_space(tmp_path, trials=3), progress="epochs")
    out = logged.getvalue()
    assert printed.getvalue() == ""  # the API logs; it does not print
    knee = run.pick("knee")
    # the end-of-search line suggests what export takes by default: the knee, in the command's words
    assert f"export a model: cellsparse export {Path('runs') / 'probe'}   (the knee of the front: trial {knee})" in out
    epoch_line = r"^  trial 0 epoch 1/1  val_acc \d\.\d{4}  loss \d+\.\d{4}  \d+:\d\d elapsed, ETA 0:00  \| search "
    assert re.search(epoch_line, out, re.M)
    again = Run.load(tmp_path / "runs" / "probe")
    assert again.trials.equals(run.trials) and again.front["number"].tolist() == run.front["number"].tolist()
    assert run.pick(1e12) == run.pick("accuracy")
    for bad, words in [("best", "pick must be"), (-1.0, "must be > 0"), (True, "pick must be")]:
        with pytest.raises(UserError, match=words):
            run.pick(bad)
    with pytest.raises(UserError, match="not a run directory"):
        Run.load(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no such space file"):
        search(tmp_path / "missing.yaml")


def test_predict_takes_numpy_arrays_and_torch_tensors(runs_root: Path, tmp_path: Path) -> None:
    export_dir = tiny_export(runs_root, "sparse_topk")[0]
    images = np.random.default_rng(3).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    path = tmp_path / "cells.npz"
    np.savez(path, test_images=images)
    from_file = P.predict(export_dir, [path])
    from_numpy = P.predict(export_dir, images)
    from_torch = P.predict(export_dir, torch.from_numpy(images).permute(0, 3, 1, 2))  # (N, C, H, W)
    assert from_numpy.predicted == from_file.predicted == from_torch.predicted
    assert [r["probability"] for r in from_numpy.rows] == [r["probability"] for r in from_file.rows]
    assert [r["input"] for r in from_numpy.rows] == [f"array[{i}]" for i in range(5)]
    one = P.predict(export_dir, torch.from_numpy(images[2]).permute(2, 0, 1).float() / 255)  # (3, 20, 20): (C, H, W)
    assert one.predicted == [from_file.predicted[2]]
    with pytest.raises(UserError, match="fits no image layout"):
        P.predict(export_dir, np.zeros((1, 2, 3, 4, 5), np.uint8))
    with pytest.raises(UserError, match="empty"):
        P.predict(export_dir, np.zeros((0, 8, 8, 3), np.uint8))


def test_cellsparse_command_help_version_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    printed = capsys.readouterr().out
    for name in ("search", "report", "export", "predict"):
        assert re.search(rf"^  {name}\s", printed, re.M), name
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cellsparse {cli.version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", cli.version())
    assert cli.main(["serch"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'serch'")
    assert cli.main(["export", "--help"]) == 0 and "--pick" in capsys.readouterr().out
    assert cli.main(["report", "/no/such/run"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert cli.main(["search", "--trials", "0", "--space", "x.yaml"]) == 2


def test_cellsparse_command_in_a_subprocess() -> None:
    done = subprocess.run([sys.executable, "-m", "runner.cli", "--version"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("cellsparse ")
    assert 'cellsparse = "runner.cli:main"' in (REPO / "pyproject.toml").read_text()


def test_export_names_the_missing_onnx_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    from runner.export import export_run

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx_ir" else real(name, *a))
    with pytest.raises(UserError, match=r"onnx-ir is not installed; install them with: python -m pip install -e "
                                        r"\"\.\[export\]\""):
        export_run(tmp_path / "any-run", log=lambda line: None)


def test_optuna_dashboard_sees_objective_names_and_constraints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """optuna-dashboard's own server code, called as a WSGI app on the run's journal."""
    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard import wsgi

    from cellsparse.rundir import open_storage
    from runner.search import main

    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    # the probe at 16 px costs about 55-70 kFLOPs, so a 60 kFLOPs budget leaves some trials infeasible
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--space", str(write_space(tmp_path, trials=4, max_flops=6.0e4))]) == 0
    app = wsgi(open_storage(tmp_path / "runs" / "probe"))

    def get(path: str) -> dict:
        status: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "test",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["probe"]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert detail["objective_names"] == ["accuracy", "flops"]
    shown = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in detail["trials"]]
    constraints = [json.loads(attrs["constraints"]) if isinstance(attrs["constraints"], str) else attrs["constraints"]
                   for attrs in shown]
    assert all(list(c) == ["max_flops"] for c in constraints), constraints
    feasible = [c["max_flops"] <= 0 for c in constraints]
    assert any(feasible) and not all(feasible), constraints


def test_run_trial_typed_trials_and_a_quiet_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run.trial(n) holds a trial's config, metrics, history and model; run.trials keeps integers
    integers; set_verbosity(WARNING) quiets the API, progress="none" its progress lines."""
    import logging

    from cellsparse.log import set_verbosity
    from runner.search import search

    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    set_verbosity(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()) as logged:
            run = search(write_space(tmp_path, trials=2, epochs=2))
    finally:
        set_verbosity(logging.INFO)
    assert logged.getvalue() == ""
    with contextlib.redirect_stderr(io.StringIO()) as logged:
        search(write_space(tmp_path, name="again", trials=1), progress="none")
    assert "[1/1]" not in logged.getvalue() and "Pareto front" in logged.getvalue()
    assert str(run.trials["config.width"].dtype) == "Int64" and str(run.trials["config.epochs"].dtype) == "Int64"
    assert str(run.trials["params_count"].dtype) == "Int64" and run.trials["config.lr"].dtype == float
    trial = run.trial(1)
    assert trial.number == 1 and trial.state == "COMPLETE" and trial.strategy == "probe_net"
    assert trial.config["width"] == run.trials.loc[1, "config.width"] and isinstance(trial.config["width"], int)
    assert trial.values == {"accuracy": run.trials.loc[1, "accuracy"], "flops": run.trials.loc[1, "flops"]}
    assert [h["epoch"] for h in trial.history] == [1, 2] and trial.metrics["val_accuracy"] == trial.values["accuracy"]
    model = trial.load_model()
    assert not model.training and model(torch.zeros(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(UserError, match=r"no trial 7 \(the run has trials 0, 1\)"):
        run.trial(7)


def test_exports_of_different_picks_go_to_different_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.search import search

    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stderr(io.StringIO()):
        run = search(write_space(tmp_path, trials=3), progress="none")
    lines: list[str] = []
    first = run.export(trial=0, formats=["pt2"], measure=False, log=lines.append)
    second = run.export(trial=2, formats=["pt2"], measure=False, log=lines.append)
    assert first == Path("runs/probe/export/trial-0") and second == Path("runs/probe/export/trial-2")
    assert json.loads((first / "model_card.json").read_text())["trial"]["number"] == 0
    assert json.loads((second / "model_card.json").read_text())["trial"]["number"] == 2
    card = (first / "model_card.json").read_text()
    with pytest.raises(UserError, match=r"runs/probe/export/trial-0: holds an export already \(trial 0\); pass "
                                        r"--replace"):
        run.export(trial=0, formats=["pt2"], measure=False, log=lines.append)
    assert (first / "model_card.json").read_text() == card  # untouched
    run.export(trial=0, formats=["pt2"], measure=False, replace=True, log=lines.append)
    assert lines[-2].startswith("replaced the export in runs/probe/export/trial-0")
    assert lines[-1] == "classify images with: cellsparse predict runs/probe/export/trial-0 IMAGES"
    with pytest.raises(UserError, match="holds an export already \\(trial 2\\)"):
        run.export(trial=0, out=second, formats=["pt2"], measure=False, log=lines.append)
    # predict finds the export under runs/<name>/export when there is one, and names them when there are several
    with pytest.raises(UserError, match=r"runs/probe/export: holds 2 exports \(trial-0, trial-2\); pass one of them"):
        P.predict(Path("runs/probe/export"), np.zeros((16, 16, 3), np.uint8))
