"""``python -m runner.search`` with the in-process optuna backend: the run directory, reproducibility,
failed trials, the FLOPs budget, the dry run, and every kind of bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from cellsparse.rundir import open_storage, trials_frame
from runner.search import main
from tests.runner.search_fixtures import journal_trials, read_trials, set_env, write_space

RUN_FILES = ("space.yaml", "run.json", "study.journal", "trials.csv")
TRIAL_FILES = ("config.json", "metrics.json", "history.json", "model.pt", "meta.json", "looked_at.npz")


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    set_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def search(*args: str | Path) -> int:
    """Run the CLI in this process; its exit status (argparse exits through SystemExit)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to prove a refused command touched nothing)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_optuna_search_writes_a_complete_run_dir(tmp_path, capsys) -> None:
    space = write_space(tmp_path, trials=3)
    assert search("--space", space) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "probe"  # the default --out
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    rows = read_trials(run)
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    expected = {"number", "state", "feasible", "strategy", "accuracy", "flops", "test_accuracy", "k_final",
                "params_count", "duration_s", "datetime_start", "datetime_complete", "error", "config.strategy",
                "config.width", "config.lr", "config.epochs", "config.k_rule"}
    assert expected <= set(rows[0])
    for number in range(3):
        for name in TRIAL_FILES:
            assert (run / "trials" / str(number) / name).is_file(), (number, name)
    info = json.loads((run / "run.json").read_text())
    assert info["backend"] == "optuna" and info["finished_at"] and info["wall_time_s"] > 0
    assert {"python", "torch", "optuna", "ray", "cellsparse"} <= set(info["versions"])
    assert {"platform", "cpus", "gpu"} <= set(info["machine"])
    assert (run / "space.yaml").read_text().startswith("name: probe")
    assert out.count("COMPLETE") == 3 and "Pareto front" in out
    assert f"export a model: cellsparse export {Path('runs') / 'probe'}   (the knee of the front: trial" in out
    # the journal alone regenerates the same table
    study = optuna.load_study(study_name="probe", storage=open_storage(run))
    regenerated = trials_frame(study, ["accuracy", "flops"])
    assert regenerated["number"].tolist() == [0, 1, 2]
    assert regenerated["test_accuracy"].notna().all()


def test_same_seed_same_trials(tmp_path) -> None:
    space = write_space(tmp_path, trials=3)
    assert search("--space", space, "--out", "a") == 0
    assert search("--space", space, "--out", "b") == 0
    a, b = journal_trials(tmp_path / "a"), journal_trials(tmp_path / "b")
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.values for t in a] == [t.values for t in b]  # and the same numbers, on CPU
    assert search("--space", space, "--out", "c", "--seed", "1") == 0
    assert [t.params for t in journal_trials(tmp_path / "c")] != [t.params for t in a]


def test_failing_and_nan_trials_are_recorded_and_the_search_goes_on(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PROBE_BEHAVIOURS", "ok,raise,nan,ok")  # trial 1 raises, trial 2 diverges
    space = write_space(tmp_path, trials=4, behaviour="by_trial")
    assert search("--space", space, "--out", "run") == 0
    rows = read_trials(tmp_path / "run")
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert rows[0]["error"] == rows[3]["error"] == ""
    assert rows[1]["error"] == "RuntimeError: probe_net was told to fail"
    assert rows[2]["error"].startswith("NonFiniteLossError: training loss became nan at epoch 1/1")
    for number in (1, 2):
        assert (tmp_path / "run" / "trials" / str(number) / "error.txt").is_file()
    assert "[4/4]" in capsys.readouterr().out  # failed trials count toward the budget


def test_over_budget_configs_are_not_trained(tmp_path) -> None:
    # probe_net FLOPs grow with width (2..8): ~28k to ~111k per 16 px image
    space = write_space(tmp_path, trials=4, max_flops=6.0e4)
    assert search("--space", space, "--out", "run") == 0
    rows = read_trials(tmp_path / "run")
    over = [r for r in rows if r["feasible"] == "False"]
    under = [r for r in rows if r["feasible"] == "True"]
    assert over and under
    for row in over:
        assert row["state"] == "COMPLETE" and float(row["accuracy"]) == 0.0 and float(row["flops"]) > 6.0e4
        assert not (tmp_path / "run" / "trials" / row["number"] / "model.pt").exists()
    for row in under:
        assert float(row["flops"]) <= 6.0e4
    trials = {t.number: t for t in journal_trials(tmp_path / "run")}
    # one constraint value per budget (here flops), in the list optuna-dashboard shows
    assert all(list(trials[int(r["number"])].constraints.values()) == pytest.approx([float(r["flops"]) - 6.0e4]) for r in over)


def test_dry_run_prints_configs_and_writes_nothing(tmp_path, capsys) -> None:
    space = write_space(tmp_path, trials=3)
    before = snapshot(tmp_path)
    assert search("--space", space, "--dry-run", "--trials", "2") == 0
    out = capsys.readouterr().out
    assert out.count("probe_net") >= 2 and "flops=" in out and '"strategy": "probe_net"' in out
    assert snapshot(tmp_path) == before
    taken = tmp_path / "taken"
    (taken / "notes.txt").parent.mkdir()
    (taken / "notes.txt").write_text("someone's")
    assert search("--space", space, "--dry-run", "--out", str(taken)) == 2  # refused as the search would refuse it
    assert "is not empty and holds no run" in capsys.readouterr().err


def test_dry_run_says_which_limit_a_config_is_beyond(tmp_path, capsys) -> None:
    space = write_space(tmp_path, max_flops=1.0)  # every config is over it
    assert search("--space", space, "--dry-run", "--trials", "1") == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "over budget" in ln)
    assert line.endswith("beyond its limit") and "over budget: flops " in line and "{" not in line


def test_resume_of_a_finished_run_runs_nothing_more(tmp_path) -> None:
    space = write_space(tmp_path, trials=2)
    assert search("--space", space, "--out", "run") == 0
    assert search("--out", "run", "--resume") == 0
    assert len(journal_trials(tmp_path / "run")) == 2
    assert search("--out", "run", "--resume", "--trials", "3") == 0  # a resume may raise the budget
    assert [t.state.name for t in journal_trials(tmp_path / "run")] == ["COMPLETE"] * 3
    assert len(json.loads((tmp_path / "run" / "run.json").read_text())["sessions"]) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "missing.yaml"], "missing.yaml: no such space file"),
        (["--space", "{space}", "--address", "10.0.0.1:6379", "--backend", "optuna"], "--address"),
        (["--space", "{space}", "--address", "127.0.0.1:{port}", "--backend", "ray"], "no Ray cluster answers"),
        (["--space", "{space}", "--bogus"], "unrecognized arguments: --bogus"),
        (["--space", "{space}", "--backend", "dask"], "--backend dask: unknown backend; valid: ray, optuna"),
        (["--space", "{space}", "--trials", "0"], "--trials must be at least 1"),
        pytest.param(["--space", "{space}", "--gpus-per-trial", "1"], "torch sees no CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
        (["--space", "{space}", "--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number >= 0, but got nan"),
        (["--space", "{space}", "--cpus-per-trial", "inf"], "--cpus-per-trial must be a finite number > 0, but got inf"),
        (["--out", "{run}", "--resume", "--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number"),
        (["--space", "{space}", "--backend", "optuna", "--cpus-per-trial", "1e9"], "CPUs for this process"),
        (["--space", "{space}", "--resume", "--out", "empty"], "holds no run to resume"),
        ([], "--space FILE is required"),
        (["--resume"], "--resume without --space needs --out DIR"),
        (["--space", "{space}", "--out", "{run}"], "already holds a different run"),
        (["--space", "{same}", "--out", "{run}"], "already holds this run; pass --resume"),
        (["--space", "{space}", "--out", "{run}", "--resume"], "holds a run of a different space"),
        (["--space", "{space}", "--out", "{space}/run"], "is a file, not a directory"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(tmp_path, capsys, args, message) -> None:
    run = tmp_path / "existing"
    same = write_space(tmp_path, name="probe", trials=1)
    assert search("--space", same, "--out", run) == 0
    space = write_space(tmp_path, name="other", trials=1, epochs=2)
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    before = snapshot(tmp_path)
    values = {"space": space, "same": same, "run": run, "port": _free_port()}
    assert search(*[a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert message in err
    assert snapshot(tmp_path) == before


def test_cli_subprocess_help_and_bad_flag() -> None:
    help_run = subprocess.run([sys.executable, "-m", "runner.search", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0
    assert help_run.stdout.startswith("usage: python -m runner.search ")  # the usage line as it was started
    for flag in ("--space", "--out", "--trials", "--backend", "--address", "--resume", "--max-concurrent",
                 "--cpus-per-trial", "--gpus-per-trial", "--seed", "--dry-run", "--progress", "--quiet"):
        assert flag in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "runner.search", "--space", "nope.yaml"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: nope.yaml: no such space file"


def test_output_piped_into_a_reader_that_stops_ends_quietly(tmp_path) -> None:
    """``cellsparse search ... --dry-run | head -1``: the reader closes the pipe; no traceback."""
    space = Path(__file__).resolve().parents[2] / "search_space" / "cells.yaml"
    command = ["-m", "runner.cli", "search", "--space", str(space), "--out", str(tmp_path / "run"), "--dry-run"]
    proc = subprocess.Popen([sys.executable, *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 1 and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_a_relative_data_path_is_stored_absolute_and_the_run_still_resumes(tmp_path, monkeypatch) -> None:
    # space.yaml is what resume, the report and export read, from any working directory.
    import yaml

    from cellsparse import rundir
    from search_space.spec import load_space

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(
        "name: rel\ndata: {source: npz, path: data/cells.npz}\nobjectives: {accuracy: maximize, flops: minimize}\n"
        "space: {strategy: {dense_cnn: {}}}\n",
        encoding="utf-8",
    )
    space = load_space(tmp_path / "space.yaml")
    out = tmp_path / "runs" / "rel"
    out.mkdir(parents=True)
    rundir.write_space(out, space)
    (out / rundir.JOURNAL_FILE).write_text("", encoding="utf-8")
    stored = yaml.safe_load((out / rundir.SPACE_FILE).read_text(encoding="utf-8"))
    assert stored["data"]["path"] == str(tmp_path / "data" / "cells.npz")
    rundir.check_out_dir(out, space, resume=True)  # the same file, given again, is the same run


# --------------------------------------------------------------------------------------------- data checked up front


def _npz(path: Path, *, classes: int = 3, per_class: int = 4, dtype: type = np.uint8, **overrides: np.ndarray) -> Path:
    """A small MedMNIST-layout npz of 16 px RGB images, every class in every split."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        labels = np.repeat(np.arange(classes), per_class).astype(np.uint8)
        images = rng.integers(0, 255, (len(labels), 16, 16, 3)).astype(dtype)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def _npz_space(directory: Path, data: str, name: str = "real") -> Path:
    text = (write_space(directory, name=name, trials=1).read_text()
            .replace("data: {source: synthetic, image_size: 16, train: 64, val: 32, test: 32, augment: true}",
                     f"data: {{source: {data}, augment: false}}"))
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def _nan_images() -> np.ndarray:
    images = np.random.default_rng(1).random((12, 16, 16, 3)).astype(np.float32)
    images[3, 4, 5, 1] = np.nan
    return images


def _truncated_folder(root: Path) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((16, 16), 25 * i, np.uint8)).save(root / c / f"{i}.png")
    broken = root / "b" / "3.png"
    broken.write_bytes(broken.read_bytes()[:-30])
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _npz(d / "x.npz", dtype=np.float32, train_images=_nan_images()), "NaN or infinite values"),
        (lambda d: _npz(d / "x.npz", val_images=np.zeros((0, 16, 16, 3), np.uint8), val_labels=np.zeros((0, 1), np.uint8)),
         "val"),
        (lambda d: _npz(d / "x.npz", train_labels=np.repeat([0, 1, 1], 4).astype(np.uint8)[:, None]),
         "train split has no images of class(es) class_2"),
        (lambda d: _npz(d / "x.npz", classes=1), "a single class"),
        (lambda d: _truncated_folder(d / "cells"), "cannot read image"),
    ],
    ids=["nan-pixels", "empty-split", "class-missing-from-train", "single-class", "truncated-image"],
)
def test_bad_data_is_one_line_before_any_trial(tmp_path, capsys, make, message) -> None:
    data = make(tmp_path)
    source = "folder" if data.is_dir() else "npz"
    space = _npz_space(tmp_path, f"{source}, path: {data}")
    capsys.readouterr()
    assert search("--space", space, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_data(tmp_path, capsys) -> None:
    data = _npz(tmp_path / "cells.npz")
    space = _npz_space(tmp_path, f"npz, path: {data}")
    assert search("--space", space, "--out", tmp_path / "run") == 0
    fingerprint = json.loads((tmp_path / "run" / "run.json").read_text())["data_fingerprint"]
    assert fingerprint.startswith("sha256:")
    _npz(data, per_class=5)  # the same file name, other images
    before = snapshot(tmp_path / "run")
    capsys.readouterr()
    assert search("--out", tmp_path / "run", "--resume", "--trials", "2") == 2
    err = capsys.readouterr().err.strip()
    assert "differ from the data this run started with" in err and fingerprint in err and "\n" not in err
    assert snapshot(tmp_path / "run") == before


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b""], ids=["http-server", "silent-port"])
def test_address_of_an_open_port_that_is_not_ray_is_one_line_fast(tmp_path, capsys, reply) -> None:
    """ray.init waited over five minutes on such a port."""
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            accepted.append(conn)
            conn.recv(64)
            if reply:
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    space = write_space(tmp_path, trials=1, backend="ray")
    start = time.perf_counter()
    try:
        assert search("--space", space, "--address", f"127.0.0.1:{port}") == 2
    finally:
        thread.join(timeout=10)
        for conn in accepted:
            conn.close()
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "something listens there, but it is not a Ray cluster" in err
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------- data size, dry run


def _real_space(tmp_path: Path, data: str, extra: str = "") -> Path:
    path = tmp_path / "real.yaml"
    path.write_text(f"""name: real
seed: 0
data: {data}
objectives: {{accuracy: maximize, flops: minimize}}
training: {{epochs: 1, batch_size: 16}}
search: {{trials: 1, backend: optuna}}
space:
  strategy:
    dense_cnn: {{width: 4, stages: 1{extra}}}
""", encoding="utf-8")
    return path


def _rgb_npz(path: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(n)[:, None] % 2
    np.savez(path, **arrays)
    return path


def test_image_size_defaults_to_the_datas_own_size(tmp_path, capsys) -> None:
    """An npz of 64-px images without data.image_size trains at 64 px (not a silent 32-px resize), and the
    resolved space.yaml says so; the dry run shows the same shape."""
    _rgb_npz(tmp_path / "cells64.npz", 64)
    space = _real_space(tmp_path, f"{{source: npz, path: {tmp_path / 'cells64.npz'}}}")
    assert search(space, "--dry-run", "--trials", "1") == 0  # the space file as a positional argument
    assert "data 3x64x64" in capsys.readouterr().out
    assert search("--space", space, "--out", "run", "--quiet") == 0
    out = capsys.readouterr().out
    assert "[1/1]" not in out and "Pareto front" in out  # --quiet: no progress lines
    assert "image_size: 64" in (tmp_path / "run" / "space.yaml").read_text()
    assert json.loads((tmp_path / "run" / "trials" / "0" / "meta.json").read_text())["image_size"] == 64
    assert search("--out", "run", "--resume", "--space", space) == 0  # the same file still matches the run


def test_image_size_from_the_data_is_checked_like_a_written_one(tmp_path, capsys) -> None:
    _rgb_npz(tmp_path / "big.npz", 8)
    _rgb_npz(tmp_path / "cells32.npz", 32)
    small = _real_space(tmp_path, f"{{source: npz, path: {tmp_path / 'big.npz'}}}")
    assert search("--space", small, "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "data.image_size: expected an integer from 16 to 512, but the images in" in err and "are 8" in err
    too_big = _real_space(tmp_path, f"{{source: npz, path: {tmp_path / 'cells32.npz'}}}", ", input_size: 48")
    assert search("--space", too_big, "--dry-run") == 2
    assert "space.strategy.dense_cnn.input_size: expected at most the data's image_size 32" in capsys.readouterr().err


def test_dry_run_runs_every_data_check_of_the_search(tmp_path, capsys) -> None:
    """A folder of one class passes the cheap shape check but fails the loader's: --dry-run says so."""
    from PIL import Image

    root = tmp_path / "one_class" / "neutrophil"
    root.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(np.full((20, 20, 3), i * 10, np.uint8)).save(root / f"{i}.png")
    space = _real_space(tmp_path, f"{{source: folder, path: {tmp_path / 'one_class'}}}")
    before = snapshot(tmp_path)
    assert search("--space", space, "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "a single class (neutrophil)" in err
    assert snapshot(tmp_path) == before


def test_hints_follow_how_the_search_was_started(tmp_path, monkeypatch, capsys) -> None:
    """python -m runner.search is told python -m commands; cellsparse search (and Python) cellsparse ones."""
    space = write_space(tmp_path, trials=1)
    for argv0, words in (("/x/runner/search.py", "python -m runner.export"), ("/venv/bin/cellsparse", "cellsparse export")):
        monkeypatch.setattr(sys, "argv", [argv0])
        assert search("--space", space, "--out", f"run-{len(words)}", "--quiet") == 0
        assert f"export a model: {words} run-{len(words)}   (the knee" in capsys.readouterr().out
    usage = subprocess.run([sys.executable, "-m", "runner.cli", "search", "--trials", "many"], capture_output=True,
                           text=True, timeout=120)
    assert usage.returncode == 2 and "(see cellsparse search --help)" in usage.stderr, usage.stderr
