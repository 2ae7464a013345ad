"""``python -m runner.export`` on real (tiny) run directories made by the search runner.

The default suite exports the sparse_topk run once (both formats, latency measured) and checks the
files, the card, the parity figures and loading without this project; bad inputs each get one
``error:`` line and exit 2, a parity mismatch exit 1, and nothing is left half-written. Every
strategy is exported in the ``slow`` suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cellsparse.errors import UserError
from runner import export as E
from runner.engine import exporters as X
from runner.engine.artefacts import onnx_runner
from runner.engine.checkpoint import load_trained
from runner.export import pipeline
from runner.export.pick import choose_trial
from tests.runner.export_fixtures import load_without_project, project_strategies, search, space_text, tiny_export, tiny_run


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export_runs"


@pytest.fixture(scope="session")
def topk_run(runs_root: Path) -> Path:
    return tiny_run(runs_root, "sparse_topk")


@pytest.fixture(scope="session")
def exported(runs_root: Path, topk_run: Path) -> tuple[Path, E.ExportResult, list[str]]:
    return tiny_export(runs_root, "sparse_topk")  # type: ignore[return-value]


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------------------------- happy path


def test_export_writes_checked_files_and_says_why(exported: tuple[Path, E.ExportResult, list[str]]) -> None:
    out, result, lines = exported
    assert sorted(p.name for p in out.iterdir()) == [".cellsparse-export.json", "README.md", "model.onnx", "model.pt2",
                                                     "model_card.json", "parity.npz"]
    assert lines[0].startswith("picked trial 0 (sparse_topk): the knee of the accuracy/FLOPs front")
    assert any(line.startswith("onnx: parity ok on 64 images") for line in lines)
    assert any(line.startswith("pt2: parity ok on 64 images") for line in lines)
    assert _leftovers(out.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # shared like any folder, not mkdtemp's 0700


def test_the_pt2_carries_one_sample_image_not_the_export_batch(exported: tuple[Path, E.ExportResult, list[str]]) -> None:
    """torch.save writes a view's whole storage: the export batch (a slice of the validation set) must
    not ride along in the file."""
    import zipfile

    card = json.loads((exported[0] / "model_card.json").read_text())
    image_bytes = card["input"]["channels"] * card["input"]["image_size"] ** 2 * 4
    with zipfile.ZipFile(exported[0] / "model.pt2") as archive:
        sizes = [i.file_size for i in archive.infolist() if "sample_inputs" in i.filename]
    assert sizes and max(sizes) < image_bytes + 4096


def test_parity_figures_cover_both_formats_and_batch_sizes(exported: tuple[Path, E.ExportResult, list[str]]) -> None:
    card = json.loads((exported[0] / "model_card.json").read_text())
    parity = card["parity"]
    assert parity["atol"] == 1e-4 and "validation images" in parity["inputs"]
    for fmt in ("onnx", "pt2"):
        for batch in ("batch_1", "batch_64"):
            assert parity[fmt][batch]["max_abs_diff"] <= 1e-4
            assert parity[fmt][batch]["class_mismatches"] == 0


def test_model_card_fields(exported: tuple[Path, E.ExportResult, list[str]], topk_run: Path) -> None:
    out = exported[0]
    card = json.loads((out / "model_card.json").read_text())
    trial = topk_run / "trials" / "0"
    meta = json.loads((trial / "meta.json").read_text())
    metrics = json.loads((trial / "metrics.json").read_text())
    assert card["strategy"] == "sparse_topk" and card["config"] == json.loads((trial / "config.json").read_text())
    assert card["classes"] == meta["class_names"]
    spec = card["input"]
    assert (spec["channels"], spec["image_size"], spec["layout"]) == (3, 16, "NCHW")
    assert spec["mean"] == pytest.approx(meta["mean"]) and spec["std"] == pytest.approx(meta["std"])
    m = card["metrics"]
    assert m["val_accuracy"] == pytest.approx(metrics["val_accuracy"]) == pytest.approx(m["val_accuracy_rechecked"])
    assert m["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert m["flops"] == pytest.approx(metrics["flops"]) and m["params"] == metrics["params_count"]
    assert m["k_final"] == pytest.approx(metrics["k_final"]) and card["k"] == pytest.approx(round(metrics["k_final"]))
    assert 0 < m["used_fraction"] < 1
    assert card["run"]["name"] == "tiny_sparse_topk" and card["trial"]["number"] == 0
    assert card["trial"]["picked_by"] == "knee"
    assert card["data"]["source"] == "synthetic" and card["data"]["splits"] == {"train": 64, "val": 64, "test": 32}
    for runtime in ("onnxruntime", "torch_eager", "torch_export"):
        for batch in ("batch_1", "batch_64"):
            assert card["latency"]["runtimes"][runtime][batch]["images_per_s"] > 0
    assert card["latency"]["threads"] == 1
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(card["versions"])
    readme = (out / "README.md").read_text()
    assert "import numpy as np, onnxruntime as ort" in readme and "validation accuracy" in readme
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(snippet) == 5


def test_readme_snippet_runs(exported: tuple[Path, E.ExportResult, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The five-line snippet classifies raw images exactly as the eager model does."""
    out = exported[0]
    card = json.loads((out / "model_card.json").read_text())
    readme = (out / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    parity = np.load(out / "parity.npz")
    mean = np.float32(card["input"]["mean"])[:, None, None]
    std = np.float32(card["input"]["std"])[:, None, None]
    images = parity["images"] * std + mean  # back to the raw [0, 1] scale the snippet takes
    monkeypatch.chdir(out)
    printed: list[object] = []
    exec(code, {"images": images, "print": printed.append})  # noqa: S102 - our own README
    assert printed[0] == [card["classes"][i] for i in parity["logits"].argmax(axis=1)]


def test_files_load_without_this_project(exported: tuple[Path, E.ExportResult, list[str]], tmp_path: Path) -> None:
    figures = load_without_project(exported[0], tmp_path)
    assert figures["onnx"] <= 1e-4 and figures["pt2"] <= 1e-4 and figures["same_classes"]
    assert figures["project_modules"] == []


def test_onnx_has_dynamic_batch_and_metadata(exported: tuple[Path, E.ExportResult, list[str]]) -> None:
    import onnx

    model = onnx.load(str(exported[0] / "model.onnx"))
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert (inp.name, outp.name) == ("images", "logits")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["cellsparse.model_card"])["classes"] == json.loads(
        (exported[0] / "model_card.json").read_text())["classes"]


def test_rebuilt_model_runs_at_the_final_k(topk_run: Path) -> None:
    trained = load_trained(topk_run / "trials" / "0")
    assert trained.k == round(trained.metrics["k_final"])
    assert not trained.model.training


# --------------------------------------------------------------------------------------------- picking


def test_pick_options(topk_run: Path) -> None:
    from cellsparse.rundir import read_run

    run = read_run(topk_run)
    assert choose_trial(run, trial=0, pick="knee", max_flops=None).how == "trial"
    assert choose_trial(run, trial=None, pick="accuracy", max_flops=None).number == 0
    assert choose_trial(run, trial=None, pick="budget", max_flops=1e12).number == 0
    with pytest.raises(UserError, match="max_flops"):
        choose_trial(run, trial=None, pick="budget", max_flops=None)  # the run sets no budget
    with pytest.raises(UserError, match="FLOPs <= 1"):
        choose_trial(run, trial=None, pick="budget", max_flops=1)
    with pytest.raises(UserError, match="no trial 7"):
        choose_trial(run, trial=7, pick="knee", max_flops=None)


# --------------------------------------------------------------------------------------------- bad input


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        status = E.main(args)
    except SystemExit as exit_:  # argparse's own errors
        status = int(exit_.code or 0)
    err = capsys.readouterr().err.strip()
    return status, err


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _cli([str(tmp_path / "nope")], capsys)
    assert status == 2 and "not a run directory" in _one_error_line(err)
    (tmp_path / "afile").write_text("x")
    status, err = _cli([str(tmp_path / "afile")], capsys)
    assert status == 2 and "not a run directory (it is a file)" in _one_error_line(err)


def test_trial_that_is_not_complete(runs_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tests.runner.search_fixtures as probe  # registers probe_net, told here to fail in training

    run = search(runs_root, "failing", probe.write_space(tmp_path, name="failing", trials=1, behaviour="raise").read_text())
    assert "FAIL" in (run / "trials.csv").read_text()
    status, err = _cli([str(run), "--trial", "0", "--out", str(tmp_path / "x")], capsys)
    assert status == 2 and "trial 0 is FAIL, not COMPLETE" in _one_error_line(err)
    status, err = _cli([str(run), "--out", str(tmp_path / "x")], capsys)
    assert status == 2 and "no complete, feasible trial" in _one_error_line(err)
    assert not (tmp_path / "x").exists()


def test_no_feasible_trial(runs_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = space_text("overbudget", "dense_cnn", extra="constraints: {max_flops: 10}\n")
    run = search(runs_root, "overbudget", text)
    status, err = _cli([str(run)], capsys)
    assert status == 2 and "no complete, feasible trial" in _one_error_line(err)
    status, err = _cli([str(run), "--trial", "0"], capsys)
    assert status == 2 and "infeasible" in _one_error_line(err)
    assert not (run / "export").exists()


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    return copy


def test_corrupt_or_truncated_model_file(topk_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(topk_run, tmp_path)
    weights = run / "trials" / "0" / "model.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    status, err = _cli([str(run)], capsys)
    line = _one_error_line(err)
    assert status == 2 and "corrupt or truncated model file" in line and "model.pt" in line
    weights.write_bytes(b"not a checkpoint")
    status, err = _cli([str(run)], capsys)
    line = _one_error_line(err)
    assert status == 2 and "corrupt or truncated" in line and "weights_only" not in line  # torch's advice not passed on
    assert not (run / "export").exists() and _leftovers(run) == []


def test_bad_flags(topk_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _cli([str(topk_run), "--formats", "onnx,tflite"], capsys)
    assert status == 2 and "unknown format" in _one_error_line(err)
    status, err = _cli([str(topk_run), "--trial", "0", "--pick", "accuracy"], capsys)
    assert status == 2 and "not allowed with" in _one_error_line(err)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    status, err = _cli([str(topk_run), "--out", str(busy)], capsys)
    assert status == 2 and "not empty and holds no export" in _one_error_line(err)
    assert (busy / "notes.txt").read_text() == "mine"
    status, err = _cli([str(topk_run), "--out", str(busy / "notes.txt" / "export")], capsys)
    line = _one_error_line(err)
    assert status == 2 and "notes.txt is a file, not a directory" in line
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_a_model_that_does_not_rebuild_is_refused(topk_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A recorded accuracy the rebuilt model does not reach means a wrong k, config or data: refused."""
    run = _copy(topk_run, tmp_path)
    metrics_path = run / "trials" / "0" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["val_accuracy"] = metrics["accuracy"] = min(1.0, metrics["val_accuracy"] + 0.25)
    metrics_path.write_text(json.dumps(metrics))
    status, err = _cli([str(run), "--trial", "0"], capsys)
    assert status == 1 and "do not rebuild it" in _one_error_line(err)
    assert not (run / "export").exists()


def test_parity_mismatch_fails_and_writes_nothing(exported: tuple[Path, E.ExportResult, list[str]], topk_run: Path,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    program = torch.export.load(exported[0] / "model.pt2")  # skip re-tracing: the program is the same
    monkeypatch.setattr(pipeline, "to_exported_program", lambda model, example: program)
    real_runner = pipeline.pt2_runner

    def off_by_a_little(path: Path):  # noqa: ANN202
        run = real_runner(path)
        return lambda x: run(x) + 1e-3

    monkeypatch.setattr(pipeline, "pt2_runner", off_by_a_little)
    out = tmp_path / "deploy"
    status, err = _cli([str(topk_run), "--formats", "pt2", "--out", str(out), "--no-latency"], capsys)
    line = _one_error_line(err)
    assert status == 1 and "parity check failed for pt2" in line and "max |exported - eager| = 0.001" in line
    assert "64 predicted classes differ" in line and "nothing was written" in line
    assert not out.exists() and _leftovers(tmp_path) == []


def test_re_export_replaces_only_its_own_files(exported: tuple[Path, E.ExportResult, list[str]], topk_run: Path,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-exporting swaps the export's files and keeps what runner.predict or the user put beside them."""
    program = torch.export.load(exported[0] / "model.pt2")
    monkeypatch.setattr(pipeline, "to_exported_program", lambda model, example: program)
    out = tmp_path / "deploy"
    lines: list[str] = []
    E.export_run(topk_run, formats=["pt2"], out=out, measure=False, log=lines.append)
    (out / "predictions.csv").write_text("input,predicted\na.png,x\n")
    (out / "notes").mkdir()
    (out / "notes" / "why.txt").write_text("the user's")
    (out / "model.onnx").write_text("a format the previous export wrote and this one does not")
    manifest = json.loads((out / ".cellsparse-export.json").read_text())  # as if the previous export had written it
    manifest["files"]["model.onnx"] = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    (out / ".cellsparse-export.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"holds an export already \(trial \d+\); pass --replace to replace it"):
        E.export_run(topk_run, formats=["pt2"], out=out, measure=False, log=lines.append)
    assert (out / "model.onnx").exists()  # refused: nothing touched
    E.export_run(topk_run, formats=["pt2"], out=out, measure=False, replace=True, log=lines.append)
    assert (out / "predictions.csv").read_text() == "input,predicted\na.png,x\n"
    assert (out / "notes" / "why.txt").read_text() == "the user's"
    assert not (out / "model.onnx").exists() and any(line.startswith("replaced the export in") for line in lines)
    assert json.loads((out / "model_card.json").read_text())["files"] == {"pt2": "model.pt2"}
    assert _leftovers(tmp_path) == []

    failed: list[str] = []

    def fail_at_readme(src: object, dst: object, _replace=os.replace) -> None:  # noqa: ANN001 - once, mid-swap
        if not failed and Path(str(dst)) == out / "README.md" and ".partial-" in str(src):
            failed.append(str(src))
            raise OSError("disk full")
        _replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_at_readme)
    card_before = (out / "model_card.json").read_text()
    with pytest.raises(OSError, match="disk full"):
        E.export_run(topk_run, formats=["pt2"], out=out, measure=False, replace=True, log=lines.append)
    assert failed and (out / "model_card.json").read_text() == card_before  # the previous export, whole
    assert sorted(p.name for p in out.iterdir()) == [".cellsparse-export.json", "README.md", "model.pt2",
                                                     "model_card.json", "notes", "parity.npz", "predictions.csv"]
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------- ONNX pieces


def test_stable_sort_is_exported_exactly_where_topk_is_not(tmp_path: Path) -> None:
    """Ties: a stable sort keeps the same elements in torch and onnxruntime; topk does not."""

    class Select(torch.nn.Module):
        def __init__(self, stable: bool) -> None:
            super().__init__()
            self.stable = stable

        def forward(self, scores: torch.Tensor) -> torch.Tensor:
            if self.stable:
                return scores.sort(dim=1, descending=True, stable=True).indices[:, :5].float()
            return scores.topk(5, dim=1).indices.float()

    scores = torch.randint(0, 3, (16, 40)).float()  # many ties
    differing = {}
    for stable in (True, False):
        program = X.to_exported_program(Select(stable).eval(), scores)
        X.save_onnx(program, tmp_path / "s.onnx", {})
        got = onnx_runner(tmp_path / "s.onnx")(scores.numpy())
        differing[stable] = int((got != Select(stable)(scores).numpy()).any(axis=1).sum())
        assert X.uses_topk(program) is not stable
    assert differing[True] == 0 and differing[False] > 0


def test_median_translation_matches_torch(tmp_path: Path) -> None:
    """aten.median.dim has no ONNX translation in torch; ours returns torch's lower median."""
    import onnxruntime as ort

    class Medians(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.median(dim=-1).values, x.median(dim=1, keepdim=True).values

    x = torch.randn(3, 6, 7)
    program = torch.export.export(Medians().eval(), (x,))
    onnx_program = torch.onnx.export(program, dynamo=True, custom_translation_table=X._onnx_translations(), verbose=False)
    onnx_program.save(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    want = Medians()(x)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("mask", ["none", "additive", "boolean", "causal"])
def test_attention_translation_matches_torch_and_fuses_in_onnxruntime(mask: str, tmp_path: Path) -> None:
    """Our ONNX for scaled_dot_product_attention returns torch's output, and onnxruntime folds its
    scale and key transpose into a FusedMatMul (no Transpose left to run); causal attention keeps
    the exporter's translation, which returns torch's output too."""
    import onnx
    import onnxruntime as ort

    class Attend(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            masks = {"none": None, "additive": m, "boolean": m > 0, "causal": None}
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=masks[mask], is_causal=mask == "causal", scale=None if mask == "none" else 0.3)

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    m = torch.randn(2, 3, 5, 5).masked_fill(torch.eye(5, dtype=torch.bool), 1.0)  # every row keeps a key
    batch = torch.export.Dim("batch", min=1)  # as exported models have it: a dynamic batch keeps the reshapes
    program = torch.export.export(Attend().eval(), (q, k, v, m), dynamic_shapes=({0: batch},) * 4)
    onnx_program = torch.onnx.export(program, dynamo=True, custom_translation_table=X._onnx_translations(), verbose=False)
    onnx_program.save(tmp_path / "a.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), (q, k, v, m), strict=False)}
    np.testing.assert_allclose(session.run(None, feeds)[0], Attend()(q, k, v, m).numpy(), atol=1e-6)
    ops = [node.op_type for node in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert ("FusedMatMul" in ops and "Transpose" not in ops) is (mask != "causal"), ops


# --------------------------------------------------------------------------------------------- every strategy


@pytest.mark.slow
@pytest.mark.parametrize("strategy", project_strategies())
def test_every_strategy_exports_and_loads_alone(strategy: str, runs_root: Path, tmp_path: Path) -> None:
    run = tiny_run(runs_root, strategy)
    out = tmp_path / "export"
    result = E.export_run(run, out=out, log=lambda line: None)
    parity = result.card["parity"]
    assert all(parity[f][b]["max_abs_diff"] <= 1e-4 for f in ("onnx", "pt2") for b in ("batch_1", "batch_64"))
    figures = load_without_project(out, tmp_path)
    assert figures["onnx"] <= 1e-4 and figures["pt2"] <= 1e-4 and figures["same_classes"]
    assert figures["project_modules"] == []


VARIANTS = {
    "sparse_topk": ["{embed_dim: 16, num_heads: 2, depth: 1, k_rule: top_p, pixel_embedding: fourier}",
                    "{embed_dim: 16, num_heads: 2, depth: 1, k_rule: ratio, coarse_stride: 2}"],
    "tnet_traversal": ["{width: 4, embed_dim: 16, base_resolution: 8, pooling: attention, levels: 3}"],
    "span_pyramid": ["{embed_dim: 16, num_heads: 2, depth: 1, keep_score: learned}",
                     "{embed_dim: 16, num_heads: 2, depth: 1, keep_score: variance, stages: 1}"],
    "dense_vit": ["{embed_dim: 16, num_heads: 2, depth: 1, pos_embedding: sincos, patch_size: 8}"],
}


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "block"), [(s, b) for s, blocks in VARIANTS.items() for b in blocks])
def test_config_variants_export(strategy: str, block: str, runs_root: Path, tmp_path: Path) -> None:
    run = tiny_run(runs_root, strategy, block=block)
    result = E.export_run(run, out=tmp_path / "export", measure=False, log=lambda line: None)
    assert set(result.files) == {"onnx", "pt2"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sparse_topk", "span_pyramid", "dense_cnn"])
@pytest.mark.parametrize("modality", ["opd", "event"])
def test_other_modalities_export(modality: str, strategy: str, runs_root: Path, tmp_path: Path) -> None:
    """Flat backgrounds (phase near 0, no events) give many equal selector scores: the hard case for parity."""
    run = tiny_run(runs_root, strategy, modality=modality)
    result = E.export_run(run, out=tmp_path / "export", measure=False, log=lambda line: None)
    assert result.card["input"]["modality"] == modality
    assert result.card["input"]["channels"] == {"opd": 1, "event": 2}[modality]


def test_latency_is_timed_with_the_allocator_warmed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The card's figures must not depend on what the exporting process ran before (as the objective's)."""
    from runner.export import parity

    order: list[str] = []
    monkeypatch.setattr(parity, "warm_allocator", lambda: order.append("warm"))
    figures = parity.measure_latency({"fake": lambda x: order.append("run")}, torch.zeros(2, 1, 4, 4), batch_sizes=(1,))
    assert order[0] == "warm" and order.count("warm") == 1 and "run" in order
    assert set(figures["fake"]["batch_1"]) == {"ms_per_batch", "ms_per_image", "images_per_s"}
