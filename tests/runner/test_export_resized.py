"""A model that downscales its input (input_size) exports with the resize inside: both files take frames
at the data's size and match the eager model; the card and the report say what the network sees.

One real search (optuna backend, 16 px synthetic cells): sparse_topk at input_size 12 (16 -> 12 is
not a whole factor, the hard case for area interpolation) and dense_cnn at the data's size.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from runner import export as E
from runner.engine import exporters as X
from runner.engine.artefacts import onnx_runner
from runner.export.parity import PARITY_ATOL
from tests.runner.export_fixtures import load_without_project, search

SPACE = textwrap.dedent("""\
    name: resized
    seed: 0
    data: {source: synthetic, image_size: 16, train: 64, val: 64, test: 32, augment: false}
    objectives: {accuracy: maximize, flops: minimize}
    training: {epochs: 1, batch_size: 32, lr: 3.0e-3, warmup_epochs: 0.0}
    search:
      trials: 3
      sampler: {name: random, seed: 0}
      backend: optuna
      max_concurrent: 1
    space:
      strategy:
        sparse_topk: {embed_dim: 16, num_heads: 2, depth: 1, coarse_channels: 4, input_size: 12}
        dense_cnn: {width: 4, stages: 2}
    """)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return search(tmp_path_factory.mktemp("resized"), "resized", SPACE)


@pytest.fixture(scope="module")
def trials(run: Path) -> pd.DataFrame:
    table = pd.read_csv(run / "trials.csv")
    assert set(table["strategy"]) == {"sparse_topk", "dense_cnn"}, table[["number", "strategy"]]
    return table


def test_resized_model_exports_with_the_resize_inside(run: Path, trials: pd.DataFrame, tmp_path: Path) -> None:
    number = int(trials.loc[trials["strategy"] == "sparse_topk", "number"].iloc[0])
    out = tmp_path / "export"
    result = E.export_run(run, trial=number, out=out, measure=False, log=lambda line: None)
    parity = result.card["parity"]
    assert all(parity[f][b]["max_abs_diff"] <= PARITY_ATOL for f in ("onnx", "pt2") for b in ("batch_1", "batch_64"))

    # both files take frames at the data's size, not the 12 px the network sees
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 16, 16]
    x = torch.from_numpy(np.load(out / "parity.npz")["images"])
    assert tuple(x.shape[1:]) == (3, 16, 16)
    module = torch.export.load(str(out / "model.pt2")).module()
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), np.load(out / "parity.npz")["logits"], atol=PARITY_ATOL)

    # and they run with neither this project nor its resize code
    figures = load_without_project(out, tmp_path)
    assert figures["onnx"] <= PARITY_ATOL and figures["pt2"] <= PARITY_ATOL and figures["same_classes"]

    card = result.card
    assert card["input"]["image_size"] == 16 and card["input"]["model_resolution"] == 12
    readme = (out / "README.md").read_text()
    assert "The network sees 12 x 12 px: the model area-downscales each 16 x 16 frame" in readme


def test_full_resolution_card_says_no_resize_inside(run: Path, trials: pd.DataFrame, tmp_path: Path) -> None:
    number = int(trials.loc[trials["strategy"] == "dense_cnn", "number"].iloc[0])
    result = E.export_run(run, trial=number, out=tmp_path / "export", formats=["onnx"], measure=False,
                          log=lambda line: None)
    assert result.card["input"]["model_resolution"] == 16
    assert "sees the frames at 16 x 16 px (no resize inside the model)" in (tmp_path / "export" / "README.md").read_text()


def test_report_shows_each_trials_input_resolution(run: Path, trials: pd.DataFrame) -> None:
    from cellsparse.rundir import INPUT_COLUMN, read_run
    from reports.build import build_report

    loaded = read_run(run)
    expected = loaded.trials["strategy"].map({"sparse_topk": 12.0, "dense_cnn": 16.0})  # dense_cnn: the data's size
    assert loaded.trials[INPUT_COLUMN].tolist() == expected.tolist()
    html = build_report(run).read_text(encoding="utf-8")
    assert "<th>strategy</th><th>input_size</th>" in html  # the trials table, right after the strategy
    assert "input: 12 px" in html and "input: 16 px" in html  # hover texts
    assert '"label":"input_size"' in html  # a parallel-coordinates axis


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sparse_topk", "tnet_traversal", "span_pyramid", "dense_cnn", "dense_vit"])
def test_every_strategy_exports_with_a_non_whole_downscale(strategy: str, tmp_path: Path) -> None:
    """16 -> 12 px inside each strategy: the exported program and the ONNX file match eager at batch 8 and 1."""
    from tests.search_space.test_resolution import config_of, frames, seeded

    torch.set_num_threads(1)
    model = seeded(config_of(strategy, input_size=12), 16)
    x = frames(16, 8)
    with torch.no_grad():
        eager = model(x).numpy()
    program = X.to_exported_program(model, x[:2])
    X.save_onnx(program, tmp_path / "model.onnx", {})
    run_onnx = onnx_runner(tmp_path / "model.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(x).numpy(), eager, atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(run_onnx(x.numpy()), eager, atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(run_onnx(x[:1].numpy()), eager[:1], atol=PARITY_ATOL, rtol=0)
