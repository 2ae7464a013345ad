"""runner.export recognises only what it wrote: someone else's model_card.json, README.md or model.onnx
in the output folder (or an export's file changed since) is never overwritten; one line, nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from runner.export import cli
from tests.runner.export_fixtures import tiny_run

MANIFEST = ".cellsparse-export.json"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.getbasetemp() / "export_runs", "dense_cnn")


def _export(run: Path, out: Path, capsys: pytest.CaptureFixture[str], *, replace: bool = False) -> tuple[int, str]:
    status = cli.main([str(run), "--formats", "pt2", "--no-latency", "--out", str(out)] + (["--replace"] if replace else []))
    return status, capsys.readouterr().err.strip()


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("theirs", [["model_card.json"], ["model_card.json", "README.md", "model.onnx"], ["README.md"]])
def test_a_folder_holding_someone_elses_model_card_is_not_an_earlier_export(run: Path, tmp_path: Path, theirs: list[str],
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    for name in theirs:
        (out / name).write_text(f"someone else's {name}")
    before = _snapshot(out)
    status, err = _export(run, out, capsys)
    assert status == 2 and err.count("\n") == 0 and "runner.export did not write there" in err and any(n in err for n in theirs)
    assert _snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["theirs"]


def test_an_export_lists_its_files_and_replaces_them_while_they_are_as_written(run: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    assert _export(run, out, capsys)[0] == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["written_by"] == "runner.export"
    assert sorted(manifest["files"]) == ["README.md", "model.pt2", "model_card.json", "parity.npz"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert _export(run, out, capsys)[0] == 2  # an export is there: replacing it needs --replace
    assert _export(run, out, capsys, replace=True)[0] == 0  # its own files, unchanged: replaced

    (out / "README.md").write_text("my own notes on this model")
    (out / "model.onnx").write_text("a model someone put here")
    before = _snapshot(out)
    status, err = _export(run, out, capsys, replace=True)
    assert status == 2 and err.count("\n") == 0 and "is not the file runner.export wrote there" in err
    assert _snapshot(out) == before


def test_an_unreadable_manifest_leaves_the_folder_alone(run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    assert _export(run, out, capsys)[0] == 0
    (out / MANIFEST).write_text("{not json")
    before = _snapshot(out)
    status, err = _export(run, out, capsys)
    assert status == 2 and MANIFEST in err and _snapshot(out) == before
