"""``python -m runner.predict``: preprocessing identical to the training loaders, channel rules,
outputs, and one clear error per bad input.

The end-to-end tests share the exported sparse_topk model of the export tests (one search and
one export per session); the preprocessing tests compare against ``runner.data.load_dataset``
directly and need no model.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cellsparse.errors import UserError
from runner import predict as P
from runner.data import load_dataset
from runner.engine.checkpoint import load_trained
from tests.runner.export_fixtures import tiny_export, tiny_run


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export_runs"


@pytest.fixture(scope="session")
def export_dir(runs_root: Path) -> Path:
    return tiny_export(runs_root, "sparse_topk")[0]


def _rgb(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Cell-like PNG/JPEG/TIFF files in nested folders, plus files predict must skip."""
    from runner.data.synthetic import generate

    root = tmp_path / "cells"
    (root / "day2" / "late").mkdir(parents=True)
    (root / ".cache").mkdir()
    batch = generate(6, image_size=24, seed=5, split="test")
    arrays = [(x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8) for x in batch.images]
    Image.fromarray(arrays[0]).save(root / "a.png")
    Image.fromarray(arrays[1]).save(root / "b.JPG", quality=95)
    Image.fromarray(arrays[2]).save(root / "day2" / "c.tif")
    Image.fromarray(arrays[3]).save(root / "day2" / "late" / "d.bmp")
    Image.fromarray(arrays[4][..., 0]).save(root / "day2" / "gray.png")  # gray: repeated to RGB
    Image.fromarray(np.dstack([arrays[5], np.full((24, 24), 255, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(arrays[0]).save(root / ".cache" / "hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = P.main(args)
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip()


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------------------------- end to end


def test_folder_to_csv_with_summary(export_dir: Path, images: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred.csv"
    status, printed, err = _cli([str(export_dir), str(images), "--out", str(out), "--batch-size", "4"], capsys)
    assert status == 0, err
    rows = _read_csv(out)
    names = [Path(r["input"]).relative_to(images).as_posix() for r in rows]
    assert names == ["a.png", "b.JPG", "day2/c.tif", "day2/gray.png", "day2/late/d.bmp", "rgba.png"]
    card = json.loads((export_dir / "model_card.json").read_text())
    for row in rows:
        assert list(row) == ["input", "predicted", "probability", "top2", "top2_probability", "top3", "top3_probability"]
        names = [row["predicted"], row["top2"], row["top3"]]
        assert len(set(names)) == 3 and set(names) <= set(card["classes"])
        probs = [float(row[k]) for k in ("probability", "top2_probability", "top3_probability")]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
    assert printed.startswith(f"classified 6 images with onnx -> {out}")
    assert "images/s end to end" in printed and "images/s in the model" in printed
    assert sum(int(line.split()[-2]) for line in printed.splitlines()[1:-1]) == 6


def test_predictions_are_the_eager_models(export_dir: Path, images: Path, runs_root: Path) -> None:
    """CSV probabilities = softmax of the trained model on the same preprocessed images, both formats."""
    trained = load_trained(tiny_run(runs_root, "sparse_topk") / "trials" / "0")
    card = json.loads((export_dir / "model_card.json").read_text())
    items = P.collect([images])
    x = P.preprocess(items, P.InputSpec.from_card(card))
    with torch.no_grad():
        want = torch.softmax(trained.model(torch.from_numpy(x)), dim=-1).numpy()
    for fmt in ("onnx", "pt2"):
        result = P.predict(export_dir, [images], fmt=fmt, batch_size=2)
        assert result.fmt == fmt
        got = [float(r["probability"]) for r in result.rows]
        assert [r["predicted"] for r in result.rows] == [card["classes"][i] for i in want.argmax(axis=1)]
        np.testing.assert_allclose(got, want.max(axis=1), atol=1e-5)


def _eager_probabilities(export_dir: Path, images: Path, runs_root: Path) -> np.ndarray:
    trained = load_trained(tiny_run(runs_root, "sparse_topk") / "trials" / "0")
    card = json.loads((export_dir / "model_card.json").read_text())
    x = P.preprocess(P.collect([images]), P.InputSpec.from_card(card))
    with torch.no_grad():
        return torch.softmax(trained.model(torch.from_numpy(x)), dim=-1).numpy()


def test_compile_runs_the_pt2_program_through_torch_compile_and_pads_the_last_batch(
        export_dir: Path, images: Path, runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile is replaced by a recorder that keeps the program (compiling takes a minute on a
    CPU; the slow test below compiles for real): the call, its mode and the fixed batch size are checked."""
    calls, shapes = [], []

    def record(module, **kwargs):
        calls.append(kwargs)
        return lambda x: (shapes.append(tuple(x.shape)), module(x))[1]

    monkeypatch.setattr(torch, "compile", record)
    result = P.predict(export_dir, [images], batch_size=4, compiled=True)  # 6 images: batches of 4 and 2
    assert result.fmt == "pt2" and calls == [{"mode": None, "dynamic": False}]
    assert [s[0] for s in shapes] == [4, 4]  # the short last batch is padded to the compiled size
    want = _eager_probabilities(export_dir, images, runs_root)
    np.testing.assert_allclose([float(r["probability"]) for r in result.rows], want.max(axis=1), atol=1e-5)


def test_compile_is_for_the_pt2_format_only(export_dir: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _cli([str(export_dir), str(images), "--compile", "--format", "onnx"], capsys)
    assert status == 2 and "--compile" in _one_error_line(err) and "--format onnx" in err


@pytest.mark.slow
def test_compiled_predictions_equal_the_eager_model(export_dir: Path, images: Path, runs_root: Path) -> None:
    result = P.predict(export_dir, [images], batch_size=4, compiled=True)
    want = _eager_probabilities(export_dir, images, runs_root)
    np.testing.assert_allclose([float(r["probability"]) for r in result.rows], want.max(axis=1), atol=1e-4)


def test_npz_input_with_labels_and_split(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = np.array(json.loads((export_dir / "model_card.json").read_text())["classes"])
    path = tmp_path / "cells.npz"
    arrays = {f"{s}_images": np.stack([_rgb(i + 10 * k, 20) for i in range(n)]) for k, (s, n) in
              enumerate([("train", 3), ("val", 2), ("test", 4)])}
    labels = {f"{s}_labels": np.arange(n, dtype=np.uint8)[:, None] % len(names)
              for s, n in [("train", 3), ("val", 2), ("test", 4)]}
    np.savez(path, **arrays, **labels, class_names=names)
    out = tmp_path / "p.csv"
    status, printed, err = _cli([str(export_dir), str(path), "--split", "test", "--out", str(out)], capsys)
    assert status == 0, err
    rows = _read_csv(out)
    assert [r["input"] for r in rows] == [f"{path}:test_images[{i}]" for i in range(4)]
    assert [r["label"] for r in rows] == list(names[:4])
    assert "accuracy on the 4 labelled images" in printed
    status, printed, err = _cli([str(export_dir), str(path), "--out", str(out)], capsys)
    assert status == 0 and len(_read_csv(out)) == 9  # every *_images array


def test_default_output_is_inside_the_export(export_dir: Path, images: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    status, _, err = _cli([str(copy), str(images / "a.png")], capsys)
    assert status == 0, err
    assert len(_read_csv(copy / "predictions.csv")) == 1


# --------------------------------------------------------------------------------------------- preprocessing = training


def _split_folder(root: Path, make: dict[str, list]) -> None:
    """root/{train,val,test}/<class>/<i>.png from {class: [PIL images]} (the same images in every split)."""
    for split in ("train", "val", "test"):
        for name, pictures in make.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i, picture in enumerate(pictures):
                picture.save(root / split / name / f"{i}.png")


def _val_items(root: Path) -> list[P.Item]:
    return [P.Item(p) for c in sorted(d.name for d in (root / "val").iterdir()) for p in sorted((root / "val" / c).iterdir())]


def test_folder_rgb_preprocessing_matches_the_loader(tmp_path: Path) -> None:
    root = tmp_path / "rgb"
    gray = Image.fromarray(_rgb(7, 30)[..., 0])
    _split_folder(root, {"a": [Image.fromarray(_rgb(1, 30)), gray], "b": [Image.fromarray(_rgb(2, 22)),
                                                                          Image.fromarray(_rgb(3, 30))]})
    data = load_dataset(source="folder", path=root, image_size=16, seed=0)
    assert data.modality == "rgb"
    spec = P.InputSpec(3, 16, data.modality, np.float32(data.mean), np.float32(data.std))
    np.testing.assert_array_equal(P.preprocess(_val_items(root), spec), data.images("val").numpy())


def test_folder_gray_preprocessing_matches_the_loader(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    deep = Image.fromarray((np.random.default_rng(4).integers(0, 65536, (28, 28))).astype(np.uint16))
    _split_folder(root, {"a": [Image.fromarray(_rgb(1, 28)[..., 0]), deep], "b": [Image.fromarray(_rgb(2, 28)[..., 1])]})
    data = load_dataset(source="folder", path=root, image_size=20, seed=0)
    assert data.modality == "gray" and data.in_channels == 1
    spec = P.InputSpec(1, 20, data.modality, np.float32(data.mean), np.float32(data.std))
    np.testing.assert_array_equal(P.preprocess(_val_items(root), spec), data.images("val").numpy())


def test_npz_preprocessing_matches_the_loader(tmp_path: Path) -> None:
    path = tmp_path / "cells.npz"
    splits = {"train": 4, "val": 3, "test": 2}
    images = {f"{s}_images": np.stack([_rgb(10 * i + n, 28) for n in range(k)]) for i, (s, k) in enumerate(splits.items())}
    np.savez(path, **images, **{f"{s}_labels": np.arange(k) % 2 for s, k in splits.items()})
    data = load_dataset(source="npz", path=path, image_size=16, seed=0)
    spec = P.InputSpec(3, 16, data.modality, np.float32(data.mean), np.float32(data.std))
    items = P.collect([path], split="val")
    np.testing.assert_array_equal(P.preprocess(items, spec), data.images("val").numpy())


# --------------------------------------------------------------------------------------------- channel rules


def _spec(channels: int, modality: str) -> P.InputSpec:
    return P.InputSpec(channels, 8, modality, np.zeros(channels, np.float32), np.ones(channels, np.float32))


def _save(tmp_path: Path, array: np.ndarray, name: str = "x.png") -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return path


def test_gray_image_feeds_an_rgb_model_by_repeating(tmp_path: Path) -> None:
    gray = _rgb(1, 8)[..., 0]
    x = P.preprocess([P.Item(_save(tmp_path, gray))], _spec(3, "rgb"))
    assert x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x[0, 0], gray / 255, atol=1e-6)
    np.testing.assert_array_equal(x[0, 0], x[0, 2])


def test_colour_to_gray_is_luminance_for_gray_models_only(tmp_path: Path) -> None:
    colour = _rgb(2, 8)
    path = _save(tmp_path, colour)
    x = P.preprocess([P.Item(path)], _spec(1, "gray"))
    np.testing.assert_allclose(x[0, 0], (colour / 255.0) @ np.array([0.299, 0.587, 0.114]), atol=1e-5)
    with pytest.raises(UserError, match="colour cannot be turned into phase"):
        P.preprocess([P.Item(path)], _spec(1, "opd"))


def test_gray_stored_as_rgb_is_taken_exactly(tmp_path: Path) -> None:
    gray = np.asarray(_rgb(3, 8)[..., 0], dtype=np.float32) / 255
    path = tmp_path / "g.npz"
    np.savez(path, test_images=np.repeat(gray[None, ..., None], 3, axis=-1))
    x = P.preprocess(P.collect([path]), _spec(1, "opd"))  # float, equal channels: a 1-channel image
    np.testing.assert_array_equal(x[0, 0], gray)


def test_phase_models_refuse_integer_images(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"phase \(opd\) model takes optical path difference in radians"):
        P.preprocess([P.Item(_save(tmp_path, _rgb(4, 8)[..., 0]))], _spec(1, "opd"))


def test_event_models_take_two_channel_arrays_only(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"3-channel input, but this event-camera model takes 2-channel \(ON, OFF\)"):
        P.preprocess([P.Item(_save(tmp_path, _rgb(5, 8)))], _spec(2, "event"))
    with pytest.raises(UserError, match="1-channel input"):
        P.preprocess([P.Item(_save(tmp_path, _rgb(5, 8)[..., 0], "g.png"))], _spec(2, "event"))
    counts = np.random.default_rng(0).poisson(0.3, (2, 8, 8, 2)).astype(np.uint8)
    path = tmp_path / "events.npz"
    np.savez(path, test_images=counts)
    x = P.preprocess(P.collect([path]), _spec(2, "event"))
    np.testing.assert_array_equal(x, counts.transpose(0, 3, 1, 2).astype(np.float32))  # counts as stored
    with pytest.raises(UserError, match="2-channel image, but the model takes 3"):
        P.preprocess(P.collect([path]), _spec(3, "rgb"))


# --------------------------------------------------------------------------------------------- bad input


def test_unknown_export_directory(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _cli([str(tmp_path / "nope"), str(images)], capsys)
    assert status == 2 and "no such export directory" in _one_error_line(err)
    model = tmp_path / "model.onnx"  # the model file given where its folder belongs
    model.write_bytes(b"onnx")
    status, _, err = _cli([str(model), str(images)], capsys)
    assert status == 2 and f"a file, not an export directory; pass the folder that holds it ({tmp_path})" in err


def test_export_dir_without_a_model_card(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _cli([str(tmp_path), str(images)], capsys)
    assert status == 2 and "no model_card.json here" in _one_error_line(err)
    (tmp_path / "model_card.json").write_text("{not json")
    status, _, err = _cli([str(tmp_path), str(images)], capsys)
    assert status == 2 and "cannot be read" in _one_error_line(err)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_corrupt_or_truncated_model_file(fmt: str, export_dir: Path, images: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    model = copy / f"model.{fmt}"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    status, _, err = _cli([str(copy), str(images), "--format", fmt, "--out", str(tmp_path / "p.csv")], capsys)
    line = _one_error_line(err)
    assert status == 2 and f"model.{fmt}: corrupt or truncated model file" in line
    assert not (tmp_path / "p.csv").exists()


def test_a_pt2_that_would_unpickle_is_refused_before_loading(export_dir: Path, images: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A crafted model.pt2 (a weight marked for pickling) would run os.system inside torch.export.load."""
    from tests.runner.pt2_crafted import craft

    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    marker = tmp_path / "code_ran"
    craft(export_dir / "model.pt2", copy / "model.pt2", "pickled_weight", marker)
    status, _, err = _cli([str(copy), str(images), "--format", "pt2", "--out", str(tmp_path / "p.csv")], capsys)
    line = _one_error_line(err)
    assert status == 2 and "model.pt2: refused" in line and "use_pickle" in line
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_unreadable_image_is_named(export_dir: Path, images: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    broken = images / "day2" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "p.csv"
    status, _, err = _cli([str(export_dir), str(images), "--out", str(out)], capsys)
    line = _one_error_line(err)
    assert status == 2 and str(broken) in line and "cannot read image" in line
    assert not out.exists()


def test_empty_folder_and_missing_input(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    status, _, err = _cli([str(export_dir), str(empty)], capsys)
    assert status == 2 and "no images" in _one_error_line(err) and str(empty) in err
    status, _, err = _cli([str(export_dir), str(tmp_path / "missing.png")], capsys)
    assert status == 2 and "no such file or folder" in _one_error_line(err)
    status, _, err = _cli([str(export_dir), str(empty / "sub" / "readme.txt")], capsys)
    assert status == 2 and "not an image" in _one_error_line(err)
    damaged = tmp_path / "damaged.npz"
    damaged.write_text("this was never an archive")
    status, _, err = _cli([str(export_dir), str(damaged)], capsys)
    line = _one_error_line(err)
    assert status == 2 and "not an .npz archive (not a zip file)" in line and "Python objects" not in line


def test_out_that_is_not_a_writable_file_is_one_line(export_dir: Path, images: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    status, _, err = _cli([str(export_dir), str(images), "--out", str(folder)], capsys)
    line = _one_error_line(err)
    assert status == 2 and str(folder) in line and "is a directory" in line
    assert list(folder.iterdir()) == []
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    status, _, err = _cli([str(export_dir), str(images), "--out", str(blocker / "p.csv")], capsys)
    line = _one_error_line(err)
    assert status == 2 and "--out" in line and "cannot write there" in line


def test_bad_flags(export_dir: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _cli([str(export_dir), str(images), "--batch-size", "0"], capsys)
    assert status == 2 and "--batch-size must be at least 1" in _one_error_line(err)
    status, _, err = _cli([str(export_dir), str(images), "--split", "test"], capsys)
    assert status == 2 and "--split applies to .npz inputs only" in _one_error_line(err)
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    card = json.loads((copy / "model_card.json").read_text())
    del card["files"]["onnx"]
    (copy / "model_card.json").write_text(json.dumps(card))
    status, _, err = _cli([str(copy), str(images), "--format", "onnx"], capsys)
    assert status == 2 and "no onnx model in this export" in _one_error_line(err)
    if not torch.cuda.is_available():
        status, _, err = _cli([str(export_dir), str(images), "--device", "cuda", "--format", "pt2"], capsys)
        assert status == 2 and "--device cuda" in _one_error_line(err)


@pytest.mark.gpu
def test_cuda_matches_cpu(export_dir: Path, images: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = P.predict(export_dir, [images], fmt="pt2")
    gpu = P.predict(export_dir, [images], fmt="pt2", device="cuda")
    assert [r["predicted"] for r in cpu.rows] == [r["predicted"] for r in gpu.rows]
    np.testing.assert_allclose([float(r["probability"]) for r in cpu.rows],
                               [float(r["probability"]) for r in gpu.rows], atol=1e-4)


@pytest.mark.gpu
def test_compiled_on_cuda_matches_cpu(export_dir: Path, images: Path) -> None:
    """CUDA graphs (reduce-overhead) replay into one output buffer: each batch's logits must be copied
    out before the next replay, and the padded last batch (6 images in batches of 4) cut back."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = P.predict(export_dir, [images], fmt="pt2")
    gpu = P.predict(export_dir, [images], fmt="pt2", device="cuda", batch_size=4, compiled=True)
    assert [r["predicted"] for r in cpu.rows] == [r["predicted"] for r in gpu.rows]
    np.testing.assert_allclose([float(r["probability"]) for r in cpu.rows],
                               [float(r["probability"]) for r in gpu.rows], atol=1e-4)


def test_a_card_naming_a_file_outside_its_export_is_refused(tmp_path) -> None:
    """A model card is data a user may be handed: it cannot point predict at a file elsewhere."""
    from cellsparse.errors import UserError
    from runner.predict import load_runtime

    (tmp_path / "export").mkdir()
    (tmp_path / "elsewhere.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="must name a file in the export folder"):
        load_runtime(tmp_path / "export", {"files": {"onnx": "../elsewhere.onnx"}}, "onnx", "cpu")


# --------------------------------------------------------------------------------------------- the Python API


def test_probabilities_are_the_onnx_models_softmax_and_sum_to_one(export_dir: Path, images: Path) -> None:
    """``result.probabilities`` (N x C, columns in ``result.classes`` order) is the softmax of the ONNX
    model's logits on the same preprocessed images, run here through onnxruntime directly."""
    import onnxruntime as ort

    card = json.loads((export_dir / "model_card.json").read_text())
    result = P.predict(export_dir, [images], fmt="onnx", batch_size=4)
    x = P.preprocess(P.collect([images]), P.InputSpec.from_card(card))
    session = ort.InferenceSession(str(export_dir / card["files"]["onnx"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    assert result.classes == tuple(card["classes"])
    assert result.probabilities.shape == (6, len(card["classes"])) and result.probabilities.dtype == np.float64
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(result.probabilities, want, atol=1e-6)
    assert result.predicted == [card["classes"][i] for i in want.argmax(axis=1)]


def test_the_frame_is_typed(export_dir: Path, tmp_path: Path) -> None:
    labels = np.array([0, 1, 2, 0])
    path = tmp_path / "cells.npz"
    np.savez(path, test_images=np.stack([_rgb(i, 20) for i in range(4)]), test_labels=labels)
    result = P.predict(export_dir, [path])
    frame = result.frame()
    assert list(frame.columns) == ["input", "predicted", "probability", "top2", "top2_probability", "top3",
                                   "top3_probability", "label"]
    for column in ("probability", "top2_probability", "top3_probability"):
        assert frame[column].dtype == np.float64, column
    for column in ("input", "predicted", "top2", "top3", "label"):
        assert frame[column].dtype == "string", column
    np.testing.assert_allclose(frame["probability"], result.probabilities.max(axis=1))
    assert frame["predicted"].tolist() == result.predicted
    assert (frame["probability"] >= frame["top2_probability"]).all()


def test_one_colour_image_is_one_image(export_dir: Path) -> None:
    """(40, 40, 3) is one colour image: a channel axis holds at most 4 channels, an image side more."""
    image = _rgb(7, 40)
    one = P.predict(export_dir, image)
    assert len(one.predicted) == 1 and one.frame()["input"].tolist() == ["array[0]"]
    np.testing.assert_allclose(one.probabilities, P.predict(export_dir, image[None]).probabilities)
    np.testing.assert_allclose(one.probabilities, P.predict(export_dir, [image]).probabilities)
    from_pil = P.predict(export_dir, Image.fromarray(image))  # a PIL image is an (H, W, C) array
    np.testing.assert_allclose(one.probabilities, from_pil.probabilities)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))[None]  # (1, 3, 40, 40): channels first, unambiguous
    np.testing.assert_allclose(one.probabilities, P.predict(export_dir, chw).probabilities)


def test_an_ambiguous_array_names_its_layouts_and_takes_one(export_dir: Path) -> None:
    stack = np.stack([_rgb(i, 24)[..., 0] for i in range(3)])  # (3, 24, 24): 3 gray images, or one 3-channel image
    with pytest.raises(UserError) as err:
        P.predict(export_dir, stack)
    message = str(err.value)
    assert "\n" not in message and "(3, 24, 24) is ambiguous" in message
    assert "layout='CHW'" in message and "layout='NHW'" in message
    assert len(P.predict(export_dir, stack, layout="NHW").predicted) == 3
    assert len(P.predict(export_dir, stack, layout="CHW").predicted) == 1
    tensor = torch.from_numpy(stack)
    assert len(P.predict(export_dir, tensor, layout="NHW").predicted) == 3
    with pytest.raises(UserError, match="layout must be one of"):
        P.predict(export_dir, stack, layout="WHC")
    with pytest.raises(UserError, match="has 3 axes, but layout 'NHWC' has 4"):
        P.predict(export_dir, stack, layout="NHWC")
    with pytest.raises(UserError, match="fits no image layout"):
        P.predict(export_dir, np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(UserError, match="layout applies to images in memory"):
        P.predict(export_dir, [Path("a.png")], layout="HWC")


def test_a_list_of_images_of_different_sizes(export_dir: Path) -> None:
    images = [_rgb(1, 24), _rgb(2, 32)[..., 0], _rgb(3, 20)]
    result = P.predict(export_dir, images)
    assert result.frame()["input"].tolist() == ["images[0]", "images[1]", "images[2]"]
    for i, image in enumerate(images):
        np.testing.assert_allclose(result.probabilities[i], P.predict(export_dir, image).probabilities[0])
    with pytest.raises(UserError, match=r"images\[1\]: an image of shape \(2, 24, 24, 3\)"):
        P.predict(export_dir, [images[0], np.stack([images[0], images[0]])])
    with pytest.raises(UserError, match=r"images\[1\]: a path among images"):
        P.predict(export_dir, [images[0], "a.png"])


def test_the_default_batch_holds_a_bounded_number_of_pixels() -> None:
    assert P.default_batch(28) == P.DEFAULT_BATCH and P.default_batch(128) == P.DEFAULT_BATCH
    assert P.default_batch(256) == 64 and P.default_batch(512) == 16 and P.default_batch(100_000) == 1
